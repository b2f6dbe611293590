"""SLERP: spherical linear interpolation between the base and one other model, per tensor (Shoemake, 1985,
"Animating rotation with quaternion curves"), as mergekit's ``slerp``."""

import math

import torch

from hfmerge.errors import HfMergeError
from hfmerge.methods.base import Chunk, Method, Param

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
    whole=lambda params: True,  # the angle is between whole tensors
)
