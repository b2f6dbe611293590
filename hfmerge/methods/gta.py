"""Generalized task arithmetic as mergekit defines it: θ = θ₀ + λ·norm(Σᵢ wᵢ·[elect](rescale(prune(τᵢ)))).

The family of mergekit's ``dare_ties``, ``breadcrumbs[_ties]`` and ``della[_linear]``: a pruning step per task
vector, optional L1 rescaling of the survivors (``rescale``), optional TIES sign election (``_ties`` / della),
and ``normalize`` dividing by the sum of the weights (of the selected tasks, with sign election). Built from
the steps in :mod:`hfmerge.methods.steps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hfmerge.errors import HfMergeError
from hfmerge.methods import steps
from hfmerge.methods.base import Chunk, Param
from hfmerge.methods.task_arithmetic import SCALING


@dataclass(frozen=True)
class Flag(Param):
    """A true/false parameter."""

    def describe(self) -> str:
        return "true|false"

    def check(self, method: str, name: str, value: object) -> object:
        if not isinstance(value, bool):
            raise HfMergeError(f"{method} parameter {name}={value!r} must be true or false")
        return value


DENSITY = Param(1.0, "d, the fraction of each τᵢ kept (per expert in mergekit configs; 1 keeps all)",
                low=0.0, high=1.0, low_open=True)
SEED = Param(None, "random seed (default: the config's seed)", kind=int, low=0)


def params(normalize: bool, rescale: bool, **extra: Param) -> dict[str, Param]:
    return {
        "density": DENSITY, **extra, "scaling": SCALING,
        "normalize": Flag(normalize, "divide by Σ wᵢ (of the tasks agreeing in sign, with election)"),
        "rescale": Flag(rescale, "scale each pruned τᵢ back to its L1 norm over the tensor"),
    }


def merge(chunk: Chunk, params: dict, prune: steps.Step, elect: bool) -> torch.Tensor:
    """θ₀ + λ·combine(elect(rescale(prune(τ)))) with mergekit's normalisation."""
    if params.get("seed") is not None:
        chunk.seed = params["seed"]
    pipeline = [steps.l1_rescaled(prune) if params["rescale"] else prune] + ([steps.elect_sign] if elect else [])
    combine = steps.combine_normalized(chunk.weights, elect) if params["normalize"] else steps.combine_sum
    return steps.task_vector_merge(chunk, pipeline, combine, params["scaling"])
