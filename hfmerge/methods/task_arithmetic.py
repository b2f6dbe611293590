"""Task Arithmetic (Ilharco et al., 2023, "Editing models with task arithmetic")."""

import torch

from hfmerge.methods import steps
from hfmerge.methods.base import Chunk, Method, Param
from hfmerge.methods.subspace import SUBSPACE_BOOST, boost_spectral, boosted

SCALING = Param(1.0, "λ, the scale of the merged task vector", low=0.0, low_open=True)


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """θ = θ₀ + λ Σ wᵢτᵢ (with Subspace Boosting β: θ₀ + λ·SB_β(Σ wᵢτᵢ) on matrices)."""
    combine = boosted(steps.combine_sum, params.get("subspace_boost"), chunk)
    return steps.task_vector_merge(chunk, [], combine, params["scaling"])


def merged_task_vector(chunk: Chunk, params: dict) -> torch.Tensor:
    """Rows of Σ wᵢτᵢ (what Subspace Boosting decomposes)."""
    return chunk.task_vectors().sum(0)


METHOD = Method(
    name="task_arithmetic",
    summary="Task Arithmetic: add the scaled sum of the task vectors to the base",
    formula="θ = θ₀ + λ Σ wᵢτᵢ,  τᵢ = θᵢ − θ₀  (subspace_boost β: per matrix D = Σ wᵢτᵢ = U diag(σ) Vᵀ, "
            "σⱼ ← max(σⱼ, σ_j*), j* = first j with Σ_{≤j}σ ≥ β Σσ)",
    paper="Ilharco et al. 2023, Editing models with task arithmetic (arXiv:2212.04089); Subspace Boosting: "
          "Skorobogat et al. 2025, Subspace-Boosted Model Merging (arXiv:2506.16506)",
    params={"scaling": SCALING, "subspace_boost": SUBSPACE_BOOST},
    merge=merge,
    spectral=boost_spectral(merged_task_vector),
)
