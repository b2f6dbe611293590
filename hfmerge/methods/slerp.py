"""SLERP: spherical linear interpolation between the base and one other model, per tensor (Shoemake, 1985,
"Animating rotation with quaternion curves"), as mergekit's ``slerp``."""

import math

import torch

from hfmerge.errors import HfMergeError
from hfmerge.methods.base import Chunk, Method, Param
from hfmerge.methods.gta import Flag

DOT_THRESHOLD = 0.9995  # |cos Ω| above this: (nearly) colinear, interpolate linearly
EPS = 1e-8


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """Ω = arccos(⟨θ₀/‖θ₀‖, θ₁/‖θ₁‖⟩) over the whole tensor;
    θ = sin((1−t)Ω)/sin Ω·θ₀ + sin(tΩ)/sin Ω·θ₁ (linear when |cos Ω| > 0.9995)."""
    if chunk.experts.shape[0] != 1:
        raise HfMergeError(f"slerp merges the base with exactly one other model, got {chunk.experts.shape[0]}")
    t = params["t"]
    a, b = chunk.base, chunk.experts[0]
    norm_a, norm_b = torch.linalg.vector_norm(a, dtype=torch.float64), torch.linalg.vector_norm(b, dtype=torch.float64)
    norm_a = norm_a if norm_a > EPS else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > EPS else torch.ones_like(norm_b)
    dot = float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()) / (norm_a * norm_b))
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > DOT_THRESHOLD:
        ca, cb = 1 - t, t
    else:
        omega = math.acos(dot)
        ca, cb = math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
    chunk.memo["slerp_cos"] = dot
    return a.mul(ca).add_(b, alpha=cb)


METHOD = Method(
    name="slerp",
    summary="SLERP: spherical interpolation from the base (t = 0) to the other model (t = 1), per tensor",
    formula="cos Ω = ⟨θ₀, θ₁⟩/(‖θ₀‖‖θ₁‖) per tensor;  θ = sin((1−t)Ω)/sin Ω·θ₀ + sin(tΩ)/sin Ω·θ₁  "
            "(θ = (1−t)θ₀ + tθ₁ when |cos Ω| > 0.9995)",
    paper="Shoemake 1985, Animating rotation with quaternion curves (SIGGRAPH); per-tensor use as in mergekit",
    params={"t": Param(0.5, "t, the interpolation factor (0: the base, 1: the other model)")},
    merge=merge,
    weighted=False,
    max_experts=1,
    whole=lambda params: True,  # the angle is between whole tensors
)


def _nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, flatten: bool, row_wise: bool) -> torch.Tensor:
    """mergekit's nuslerp(): SLERP of v0 → v1 over the whole tensor (flatten), over its rows (vectors along the last
    dimension) or its columns (row_wise); (near-)colinear vectors, |sin Ω| < 1e-8, interpolate linearly."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(1, -1), v1.reshape(1, -1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    a, b = v0.double(), v1.double()
    cos = ((a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min(1e-7))
           * (b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp_min(1e-7))).sum(-1, keepdim=True)
    omega = torch.acos(cos.clamp(-1, 1))
    sin = torch.sin(omega)
    colinear = sin.abs() < EPS
    safe = torch.where(colinear, torch.ones_like(sin), sin)
    ca = torch.where(colinear, 1 - t, torch.sin((1 - t) * omega) / safe).float()
    cb = torch.where(colinear, t, torch.sin(t * omega) / safe).float()
    out = v0 * ca + v1 * cb
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp(chunk: Chunk, params: dict) -> torch.Tensor:
    """t = w₂/(w₁ + w₂) (½ when the weights sum to 0); θ = θ₀ + slerp_t(τ₁, τ₂) (task_vectors) or slerp_t(θ₁, θ₂)."""
    if chunk.experts.shape[0] != 2:
        raise HfMergeError(f"nuslerp merges exactly two models, got {chunk.experts.shape[0]}")
    w0, w1 = chunk.weights
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    flatten, row_wise = params["flatten"], params["row_wise"]
    if params["task_vectors"]:
        return _nuslerp(t, chunk.experts[0] - chunk.base, chunk.experts[1] - chunk.base, flatten,
                        row_wise).add_(chunk.base)
    return _nuslerp(t, chunk.experts[0], chunk.experts[1], flatten, row_wise)


NUSLERP = Method(
    name="nuslerp",
    summary="NuSLERP: SLERP between two experts (or their task vectors) at t = w₂/(w₁+w₂), per tensor, row or column",
    formula="t = w₂/(w₁+w₂);  θ = θ₀ + slerp_t(τ₁, τ₂)  (task_vectors)  or  θ = slerp_t(θ₁, θ₂);  slerp over the "
            "flattened tensor (flatten), each row, or each column (row_wise); linear when |sin Ω| < 1e-8",
    paper="Shoemake 1985 (SLERP); mergekit's nuslerp",
    params={"flatten": Flag(True, "one angle for the whole tensor (mergekit's nuslerp_flatten)"),
            "row_wise": Flag(False, "without flatten: per column instead of per row (nuslerp_row_wise)"),
            "task_vectors": Flag(True, "interpolate τᵢ = θᵢ − θ₀ and add θ₀ (a base model); else the models")},
    merge=nuslerp,
    whole=lambda params: True,
)
