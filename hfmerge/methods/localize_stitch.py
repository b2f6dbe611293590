"""Localize-and-Stitch, dataless (He et al., 2025, "Localize-and-Stitch: efficient model merging via
sparse task arithmetic")."""

import torch

from hfmerge.methods import steps
from hfmerge.methods.base import Chunk, Method, Param, Quantile
from hfmerge.methods.ties import SCOPE


def quantiles(params: dict) -> list[Quantile]:
    return [Quantile("localize", params["sparsity"], params["topk_scope"])]


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """γᵢ = top-s of |τᵢ|;  θ = θ₀ + Σ (γᵢ / overlap) ⊙ τᵢ,  overlap = Σ γᵢ."""
    return steps.task_vector_merge(chunk, [steps.topk("localize")], steps.combine_disjoint_mean)


METHOD = Method(
    name="localize_stitch",
    summary="Localize-and-Stitch (dataless): stitch each task's top-s entries, averaging overlaps",
    formula="γᵢ = 1{|τᵢ| ≥ tᵢ(s)};  θ = θ₀ + Σ (γᵢ / max(1, Σⱼ γⱼ)) ⊙ τᵢ",
    paper="He et al. 2025, Localize-and-Stitch (arXiv:2408.13656)",
    params={
        "sparsity": Param(0.1, "s, the fraction of each |τᵢ| localized", low=0.0, high=1.0, low_open=True),
        "topk_scope": SCOPE,
    },
    merge=merge,
    quantiles=quantiles,
    weighted=False,
)
