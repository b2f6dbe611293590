"""Iso-C (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces")."""

import torch

from hfmerge.methods.base import Chunk, Method, Param, Spectral
from hfmerge.methods.subspace import is_matrix, is_matrix_name, touched


def summed(chunk: Chunk, params: dict) -> torch.Tensor:
    """Rows of Σ τᵢ."""
    return chunk.task_vectors().sum(0)


def isotropic(total: torch.Tensor, params: dict) -> torch.Tensor:
    """λ·mean(σ)·U Vᵀ of Σ τᵢ = U diag(σ) Vᵀ (every singular value replaced by the mean of all r of them)."""
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return (u @ vh).mul_(s.mean() * params["scaling"])


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """Per matrix (whole): θ = θ₀ + λ·mean(σ)·U Vᵀ of Σ τᵢ. Other tensors (any rows): θ₀ + λ·mean(τᵢ).
    The engine merges matrices through :data:`SPECTRAL` (Σ τᵢ gathered from row chunks, one buffer)."""
    if not is_matrix(chunk):
        return chunk.task_vectors().mean(0).mul_(params["scaling"]).add_(chunk.base)
    touched(chunk, "iso_c")
    return isotropic(summed(chunk, params), params).add_(chunk.base)


SPECTRAL = Spectral("iso_c", is_matrix_name, finish=isotropic, rows=summed)

METHOD = Method(
    name="iso_c",
    summary="Iso-C: the summed task vector of each matrix with a flat (isotropic) spectrum",
    formula="Σ τᵢ = U diag(σ) Vᵀ;  θ = θ₀ + λ·mean(σ)·U Vᵀ per matrix; other tensors θ₀ + λ·mean τᵢ",
    paper="Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging with Common and Task-Specific "
          "Subspaces (arXiv:2502.04959)",
    params={"scaling": Param(1.0, "λ, the scale of the merged task vector", low=0.0, low_open=True)},
    merge=merge,
    weighted=False,
    spectral=lambda params: SPECTRAL,
)
