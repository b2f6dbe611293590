"""DARE (Yu et al., 2024, "Language models are Super Mario: absorbing abilities from homologous models
as a free lunch")."""

import torch

from hfmerge.methods import steps
from hfmerge.methods.base import Chunk, Method, Param
from hfmerge.methods.task_arithmetic import SCALING


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """τ̃ᵢ = τᵢ ⊙ Bernoulli(1−p)/(1−p);  θ = θ₀ + λ Σ τ̃ᵢ."""
    if params["seed"] is not None:
        chunk.seed = params["seed"]
    return steps.task_vector_merge(chunk, [steps.dare(params["drop_rate"])], steps.combine_sum, params["scaling"])


METHOD = Method(
    name="dare",
    summary="DARE: randomly drop task-vector entries with rate p and rescale the rest",
    formula="τ̃ᵢ = τᵢ ⊙ Bernoulli(1−p)/(1−p);  θ = θ₀ + λ Σ τ̃ᵢ",
    paper="Yu et al. 2024, Language Models are Super Mario (arXiv:2311.03099)",
    params={
        "drop_rate": Param(0.8, "p, the probability of dropping an entry", low=0.0, high=1.0, high_open=True),
        "scaling": SCALING,
        "seed": Param(None, "random seed (default: the config's seed)", kind=int, low=0),
    },
    merge=merge,
)
