"""Consensus Task Arithmetic with TALL masks (Wang et al., 2024, "Localizing task information for
improved model merging and compression")."""

import torch

from hfmerge.methods import steps
from hfmerge.methods.base import Chunk, Method, Param
from hfmerge.methods.task_arithmetic import SCALING


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """mᵢ = 1{|τᵢ| > λᵢ|τ_MTL − τᵢ|};  c = 1{Σ mᵢ ≥ k};  θ = θ₀ + λ·(τ_MTL ⊙ c)."""
    step = steps.consensus(params["mask_lambda"], params["k"])
    return steps.task_vector_merge(chunk, [step], steps.combine_sum, params["scaling"])


METHOD = Method(
    name="consensus",
    summary="Consensus TA: keep the entries that at least k task masks (TALL) select",
    formula="τ_MTL = Σ τᵢ;  mᵢ = 1{|τᵢ| > λᵢ|τ_MTL − τᵢ|};  θ = θ₀ + λ·τ_MTL ⊙ 1{Σ mᵢ ≥ k}",
    paper="Wang et al. 2024, Localizing Task Information for Improved Model Merging (arXiv:2405.07813)",
    params={
        "mask_lambda": Param(0.2, "λᵢ, the TALL mask threshold (same for every task)", low=0.0),
        "k": Param(2, "minimum number of tasks whose masks select an entry", kind=int, low=1),
        "scaling": SCALING,
    },
    merge=merge,
    weighted=False,
)
