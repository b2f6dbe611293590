"""Spectral helpers of the SVD methods (TSV-Merge, Iso-C, Subspace Boosting): which tensors are matrices,
the polar factor, and Subspace Boosting (Skorobogat et al. 2025, "Subspace-Boosted Model Merging").

Every SVD runs in fp32 on the tensor's device (torch.linalg.svd, thin). Where a spectrum has ties or zeros
(duplicate or low-rank experts, e.g. LoRA), the singular vectors of the tied or null directions are not
unique and the result there is implementation-defined (as in every SVD-based merge)."""

from __future__ import annotations

import torch

from hfmerge.methods.base import Chunk, Param, Spectral

SUBSPACE_BOOST = Param(None, "β, Subspace Boosting's cumulative singular-value mass (off when unset; 1: no-op)",
                       low=0.0, high=1.0, low_open=True)


def is_matrix_name(name: str, shape: tuple[int, ...]) -> bool:
    """A 2-D tensor other than the embeddings and lm_head: where the spectral rules act."""
    return len(shape) == 2 and "embed" not in name and "lm_head" not in name


def is_matrix(chunk: Chunk) -> bool:
    """Whether the chunk's tensor is a matrix (a whole-tensor chunk's shape is the tensor's)."""
    return is_matrix_name(chunk.name, tuple(chunk.base.shape))


def touched(chunk: Chunk, rule: str) -> None:
    """Record in the tensor's memo that ``rule`` changed it (collected into merge_report.json)."""
    chunk.memo["spectral_rule"] = rule


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor of ``a`` (the nearest matrix with orthonormal columns/rows): P·Qᵀ of its
    thin SVD a = P·diag(s)·Qᵀ (the orthogonal Procrustes solution)."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def boost(delta: torch.Tensor, beta: float) -> torch.Tensor:
    """Subspace Boosting of a merged task vector D = U·diag(σ)·Vᵀ: j* = first index with cumsum(σ)/Σσ ≥ β,
    σⱼ ← max(σⱼ, σ_j*), returns U·diag(σ*)·Vᵀ. β = 1 returns D unchanged (no SVD); a zero D too."""
    if beta >= 1.0:
        return delta
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    total = s.sum()
    if not total > 0:
        return delta
    mass = s.cumsum(0) / total
    j = min(int(torch.searchsorted(mass, torch.tensor([beta], dtype=mass.dtype, device=mass.device))), len(s) - 1)
    return (u * s.clamp_min(s[j])) @ vh


def boost_spectral(rows) -> object:
    """``spectral(params)`` of a method with Subspace Boosting: its merged task vector ``rows(chunk, params)``
    (no base, no λ) gathered from row chunks, boosted, scaled by λ; None when β is unset or 1 (a no-op)."""

    def spectral(params: dict) -> Spectral | None:
        beta = params.get("subspace_boost")
        if beta is None or beta >= 1.0:
            return None
        return Spectral("subspace_boost", is_matrix_name,
                        finish=lambda d, p: boost(d, p["subspace_boost"]).mul_(p["scaling"]), rows=rows)

    return spectral


def boosted(combine, beta: float | None, chunk: Chunk):
    """``combine`` followed by Subspace Boosting with ``beta`` on a matrix (``combine`` itself otherwise)."""
    if beta is None or not is_matrix(chunk):
        return combine

    def run(taus: torch.Tensor, m) -> torch.Tensor:
        delta = combine(taus, m)
        if beta < 1.0:
            touched(chunk, "subspace_boost")
        return boost(delta, beta)

    return run
