"""Iso-C (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces")."""

import torch

from hfmerge.methods.base import Chunk, Method, Param
from hfmerge.methods.subspace import is_matrix, touched


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """Per matrix: Δ = Σ τᵢ = U diag(σ) Vᵀ; Δ_iso = mean(σ)·U Vᵀ (every singular value replaced by the mean of
    all r of them); θ = θ₀ + λΔ_iso. Other tensors: θ₀ + λ·mean(τᵢ)."""
    taus = chunk.task_vectors()
    lam = params["scaling"]
    if not is_matrix(chunk):
        return taus.mean(0).mul_(lam).add_(chunk.base)
    u, s, vh = torch.linalg.svd(taus.sum(0), full_matrices=False)
    touched(chunk, "iso_c")
    return (u @ vh).mul_(s.mean() * lam).add_(chunk.base)


METHOD = Method(
    name="iso_c",
    summary="Iso-C: the summed task vector of each matrix with a flat (isotropic) spectrum",
    formula="Σ τᵢ = U diag(σ) Vᵀ;  θ = θ₀ + λ·mean(σ)·U Vᵀ per matrix; other tensors θ₀ + λ·mean τᵢ",
    paper="Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging with Common and Task-Specific "
          "Subspaces (arXiv:2502.04959)",
    params={"scaling": Param(1.0, "λ, the scale of the merged task vector", low=0.0, low_open=True)},
    merge=merge,
    weighted=False,
    whole=lambda params: True,
)
