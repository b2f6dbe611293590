"""Fisher merging (Matena & Raffel, 2022, "Merging models with Fisher-weighted averaging")."""

import torch

from hfmerge.methods.base import Chunk, Method, Param, Stats
from hfmerge.methods.stats_params import COMMON, settings


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """θ = Σ (Fᵢ+ε) θᵢ / Σ (Fᵢ+ε); tensors without Fisher are averaged."""
    if not chunk.stats or any(f is None for f in chunk.stats):
        return chunk.experts.mean(0)
    num = torch.zeros_like(chunk.base)
    den = torch.zeros_like(chunk.base)
    for f, theta in zip(chunk.stats, chunk.experts, strict=True):
        w = f + params["epsilon"]
        num.addcmul_(w, theta)
        den.add_(w)
    return num.div_(den)


METHOD = Method(
    name="fisher",
    summary="Fisher merging: average weighted by each expert's diagonal Fisher on its own data",
    formula="θ = Σ (Fᵢ+ε)θᵢ / Σ (Fᵢ+ε),  Fᵢ = E[(∂ log p(y|x)/∂θ)²] on expert i's data",
    paper="Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging (arXiv:2111.09832)",
    params={
        "epsilon": Param(1e-10, "ε added to every Fisher value", low=0.0),
        "variant": Param("hard_last", "hard_last (last token, argmax label: MergeBench) or sft (response loss)",
                         kind=str, choices=("hard_last", "sft")),
        **COMMON,
    },
    merge=merge,
    weighted=False,
    stats=lambda p: Stats("fisher", True, dict(settings(p), fisher_variant=p["variant"])),
)
