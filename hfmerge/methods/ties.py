"""TIES-Merging (Yadav et al., 2023, "TIES-Merging: Resolving interference when merging models")."""

import torch

from hfmerge.methods import steps
from hfmerge.methods.base import Chunk, Method, Param, Quantile
from hfmerge.methods.subspace import SUBSPACE_BOOST, boost_spectral, boosted
from hfmerge.methods.task_arithmetic import SCALING

DENSITY = Param(0.2, "K, the fraction of each |τᵢ| kept", low=0.0, high=1.0, low_open=True)
SCOPE = Param("global", "top-k over the whole model per task (MergeBench) or per tensor (mergekit)",
              kind=str, choices=("global", "tensor"))


def quantiles(params: dict) -> list[Quantile]:
    return [Quantile("trim", params["density"], params["topk_scope"])]


def combiner(chunk: Chunk, params: dict) -> steps.Combine:
    """How the agreeing entries are aggregated (``aggregate``)."""
    return {"mean": steps.combine_disjoint_mean, "sum": steps.combine_sum,
            "weighted": steps.combine_normalized(chunk.weights, consensus=True)}[params["aggregate"]]


def merged_task_vector(chunk: Chunk, params: dict) -> torch.Tensor:
    """Rows of the combined task vector, without θ₀ and λ (what Subspace Boosting decomposes)."""
    taus = chunk.task_vectors()
    m = None
    for step in (steps.topk("trim"), steps.elect_sign):
        m = step(taus, m, chunk)
    return combiner(chunk, params)(taus, m)


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """Trim to the top-K of |τᵢ|, elect γ = sign(Σ τ̂ᵢ), combine the agreeing entries, θ₀ + λ·combined
    (with Subspace Boosting β, θ₀ + λ·SB_β(combined) on matrices: the final merged task vector is boosted)."""
    combine = boosted(combiner(chunk, params), params.get("subspace_boost"), chunk)
    return steps.task_vector_merge(chunk, [steps.topk("trim"), steps.elect_sign], combine, params["scaling"])


METHOD = Method(
    name="ties",
    summary="TIES: trim to the top-K magnitudes, elect signs, merge the agreeing entries",
    formula="τ̂ᵢ = τᵢ⊙1{|τᵢ| ≥ tᵢ(K)};  γ = sign(Σ τ̂ᵢ);  θ = θ₀ + λ·agg{τ̂ᵢ : sign(τ̂ᵢ) = γ}",
    paper="Yadav et al. 2023, TIES-Merging (arXiv:2306.01708); Subspace Boosting: Skorobogat et al. 2025 "
          "(arXiv:2506.16506)",
    params={
        "density": DENSITY,
        "scaling": SCALING,
        "aggregate": Param("sum", "sum (MergeBench code), disjoint mean (TIES paper) or weighted: Σ wᵢτ̂ᵢ / Σ wᵢ "
                           "over the agreeing tasks (mergekit's normalize)", kind=str,
                           choices=("sum", "mean", "weighted")),
        "topk_scope": SCOPE,
        "subspace_boost": SUBSPACE_BOOST,
    },
    merge=merge,
    quantiles=quantiles,
    spectral=boost_spectral(merged_task_vector),
)
