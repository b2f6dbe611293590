"""Task Arithmetic (Ilharco et al., 2023, "Editing models with task arithmetic")."""

import torch

from hfmerge.methods import steps
from hfmerge.methods.base import Chunk, Method, Param

SCALING = Param(1.0, "λ, the scale of the merged task vector", low=0.0, low_open=True)


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """θ = θ₀ + λ Σ wᵢτᵢ."""
    return steps.task_vector_merge(chunk, [], steps.combine_sum, params["scaling"])


METHOD = Method(
    name="task_arithmetic",
    summary="Task Arithmetic: add the scaled sum of the task vectors to the base",
    formula="θ = θ₀ + λ Σ wᵢτᵢ,  τᵢ = θᵢ − θ₀",
    paper="Ilharco et al. 2023, Editing models with task arithmetic (arXiv:2212.04089)",
    params={"scaling": SCALING},
    merge=merge,
)
