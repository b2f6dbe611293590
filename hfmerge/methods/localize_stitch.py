"""Localize-and-Stitch (He et al., 2025, "Localize-and-Stitch: efficient model merging via sparse task
arithmetic"), dataless (top-s masks of |τ|) and trained (masks learned on each expert's data)."""

import torch

from hfmerge.methods import steps
from hfmerge.methods.base import Chunk, Method, Param, Quantile, Stats
from hfmerge.methods.stats_params import COMMON, settings
from hfmerge.methods.ties import SCOPE


def quantiles(params: dict) -> list[Quantile]:
    return [Quantile("localize", params["sparsity"], params["topk_scope"])] if params["variant"] == "dataless" else []


def trained_mask(taus: torch.Tensor, m: steps.Mask, chunk: Chunk) -> torch.Tensor:
    """γᵢ from the trained masks (entries without a mask are not localized)."""
    keep = [torch.zeros_like(chunk.base, dtype=torch.bool) if g is None else g.bool() for g in chunk.stats or []]
    return steps._select(taus, m, torch.stack(keep))


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """θ = θ₀ + Σ (γᵢ / overlap) ⊙ τᵢ,  overlap = Σ γᵢ."""
    step = steps.topk("localize") if params["variant"] == "dataless" else trained_mask
    return steps.task_vector_merge(chunk, [step], steps.combine_disjoint_mean)


def stats(params: dict) -> Stats | None:
    if params["variant"] == "dataless":
        return None
    return Stats("masks", True, dict(settings(params), sparsity=params["sparsity"], lr=params["lr"],
                                     epochs=params["epochs"]))


METHOD = Method(
    name="localize_stitch",
    summary="Localize-and-Stitch: stitch each task's localized entries (top-s, or masks trained on data)",
    formula="γᵢ = 1{|τᵢ| ≥ tᵢ(s)} or trained;  θ = θ₀ + Σ (γᵢ / max(1, Σⱼ γⱼ)) ⊙ τᵢ",
    paper="He et al. 2025, Localize-and-Stitch (arXiv:2408.13656)",
    params={
        "variant": Param("dataless", "dataless (top-s of |τ|) or trained (masks learned on data)", kind=str,
                         choices=("dataless", "trained")),
        "sparsity": Param(0.1, "s, the fraction of each |τᵢ| localized (trained: the initial mask)", low=0.0,
                          high=1.0, low_open=True),
        "topk_scope": SCOPE,
        "lr": Param(0.1, "trained: Adam learning rate of the mask logits", low=0.0, low_open=True),
        "epochs": Param(1, "trained: passes over the data", kind=int, low=1),
        **COMMON,
    },
    merge=merge,
    quantiles=quantiles,
    weighted=False,
    stats=stats,
)
