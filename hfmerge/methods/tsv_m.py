"""TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in Model Merging")."""

import torch

from hfmerge.errors import HfMergeError
from hfmerge.methods.base import Chunk, Method, Param, Spectral
from hfmerge.methods.subspace import is_matrix, is_matrix_name, polar, touched

Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def top_triplets(name: str, tau: torch.Tensor, i: int, n: int, params: dict) -> Part:
    """The top k = ⌊r/N⌋ singular triplets (Uₖ, sₖ, Vₖᵀ) of one expert's τᵢ; k = 0 is refused."""
    rows, cols = tau.shape
    k = min(rows, cols) // n
    if k == 0:
        raise HfMergeError(f"tsv_m: {name} is {rows}×{cols}, rank at most {min(rows, cols)} < {n} "
                           "experts, so k = ⌊r/N⌋ would be 0 (a zero task vector): merge fewer experts or skip it")
    u, s, vh = torch.linalg.svd(tau, full_matrices=False)
    return u[:, :k].clone(), s[:k].clone(), vh[:k].clone()


def combine(parts: list[Part], params: dict) -> torch.Tensor:
    """Δ = λ·polar([U₁,ₖ … U_N,ₖ])·diag([s₁,ₖ … s_N,ₖ])·polar([V₁,ₖ … V_N,ₖ])ᵀ (N·k ≤ r columns, no zero padding:
    the paper's padded form gives the same Δ)."""
    u = polar(torch.cat([p[0] for p in parts], 1))
    s = torch.cat([p[1] for p in parts])
    vh = polar(torch.cat([p[2] for p in parts], 0))
    return (u * s) @ vh * params["scaling"]


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """Per matrix (whole): θ = θ₀ + λ·polar(U)·diag(s)·polar(V)ᵀ of every expert's top ⌊r/N⌋ triplets. Other
    tensors (any rows): θ₀ + λ·mean(τᵢ). The engine merges matrices through :data:`SPECTRAL`, one expert's whole
    τᵢ at a time."""
    taus = chunk.task_vectors()
    if not is_matrix(chunk):
        return taus.mean(0).mul_(params["scaling"]).add_(chunk.base)
    parts = [top_triplets(chunk.name, t, i, len(taus), params) for i, t in enumerate(taus)]
    touched(chunk, "tsv_m")
    return combine(parts, params).add_(chunk.base)


SPECTRAL = Spectral("tsv_m", is_matrix_name, finish=combine, expert=top_triplets)

METHOD = Method(
    name="tsv_m",
    summary="TSV-Merge: each expert's top ⌊r/N⌋ singular directions per matrix, decorrelated by polar factors",
    formula="τᵢ ≈ Uᵢ,ₖ Σᵢ,ₖ Vᵢ,ₖᵀ, k = ⌊r/N⌋;  θ = θ₀ + λ·polar([Uᵢ,ₖ])·diag([Σᵢ,ₖ])·polar([Vᵢ,ₖ])ᵀ per matrix; "
            "other tensors θ₀ + λ·mean τᵢ",
    paper="Gargiulo et al. 2025, Task Singular Vectors: Reducing Task Interference in Model Merging (arXiv:2412.00081)",
    params={"scaling": Param(1.0, "λ, the scale of the merged task vector", low=0.0, low_open=True)},
    merge=merge,
    weighted=False,
    spectral=lambda params: SPECTRAL,
)
