"""RegMean (Jin et al., 2023, "Dataless knowledge fusion by merging weights of language models")."""

import torch

from hfmerge.methods.base import Chunk, Method, Param, Stats
from hfmerge.methods.stats_params import COMMON, settings


def _solver(grams: list[torch.Tensor], alpha: float):
    """(G̃ᵢ, solve) with G̃ = α·G + (1−α)·diag(G) and solve(X) = X·(Σ G̃ᵢ)⁻¹, factorised once per tensor in
    float64 by Cholesky; pinv when Σ G̃ᵢ is singular or ill-conditioned (pivot ratio² > 1e12)."""
    reduced = [alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g)) for g in grams]
    total = torch.zeros(reduced[0].shape, dtype=torch.float64, device=reduced[0].device)
    for g in reduced:
        total += g.double()
    chol, info = torch.linalg.cholesky_ex(total)
    pivots = torch.diagonal(chol).abs()
    if int(info) == 0 and float(pivots.min()) > 0 and float(pivots.max() / pivots.min()) ** 2 < 1e12:
        return reduced, lambda x: torch.cholesky_solve(x.T, chol).T
    pinv = torch.linalg.pinv(total, hermitian=True)
    return reduced, lambda x: x @ pinv


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """Linear weights W [out, in]: W = (Σ Wᵢ G̃ᵢ)(Σ G̃ᵢ)⁻¹ (row chunks are independent); others: mean."""
    if chunk.base.dim() != 2 or not chunk.stats or any(g is None for g in chunk.stats):
        return chunk.experts.mean(0)
    if "regmean" not in chunk.memo:
        chunk.memo["regmean"] = _solver(chunk.stats, params["reduction"])
    reduced, solve = chunk.memo["regmean"]
    x = torch.zeros_like(chunk.base, dtype=torch.float64)
    for w, g in zip(chunk.experts, reduced, strict=True):
        x.addmm_(w.double(), g.double())  # float64: the solve amplifies rounding by cond(Σ G̃)
    return solve(x).to(chunk.base.dtype)


METHOD = Method(
    name="regmean",
    summary="RegMean: closed-form merge of each Linear layer matching the experts' outputs on their data",
    formula="W = (Σ Wᵢ G̃ᵢ)(Σ G̃ᵢ)⁻¹,  Gᵢ = E[xxᵀ] of the layer inputs,  G̃ = αG + (1−α)diag(G)",
    paper="Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models (arXiv:2212.09849)",
    params={"reduction": Param(0.5, "α, the scale of the Grams' off-diagonal entries", low=0.0, high=1.0),
            **COMMON},
    merge=merge,
    weighted=False,
    stats=lambda p: Stats("regmean", False, settings(p)),
)
