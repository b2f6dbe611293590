"""DELLA-Merging (Deep et al., 2024, "DELLA-Merging: reducing interference in model merging through
magnitude-based sampling"), as mergekit's ``della`` (with sign election) and ``della_linear``."""

import torch

from hfmerge.errors import HfMergeError
from hfmerge.methods import gta, steps
from hfmerge.methods.base import Chunk, Method, Param

EPSILON = Param(0.15, "ε, the spread of keep probabilities around d by magnitude rank", low=0.0, low_open=True)


def _method(name: str, elect: bool) -> Method:
    def merge(chunk: Chunk, params: dict) -> torch.Tensor:
        n = chunk.experts.shape[0]
        for d, e in zip(steps.per_task(params["density"], n), steps.per_task(params["epsilon"], n), strict=True):
            if d < 1 and not (0 < d - e and d + e < 1):
                raise HfMergeError(f"{name} on {chunk.name}: density ± epsilon ({d} ± {e}) must lie in (0, 1)")
        return gta.merge(chunk, params, steps.della_keep(params["density"], params["epsilon"]), elect=elect)

    return Method(
        name=name,
        summary="DELLA: keep each entry with a probability rising with its magnitude rank in its row, "
                "L1 rescale" + (", TIES sign election" if elect else ""),
        formula="pᵣ = d − ε + 2ε·(r−1)/(c−1) (rank r of c in the row);  τ̃ᵢ = rescale(τᵢ ⊙ Bernoulli(p))"
                + (";  γ = sign(Σ wᵢτ̃ᵢ), keep sign(τ̃ᵢ) = γ" if elect else "")
                + ";  θ = θ₀ + λ·Σ wᵢτ̃ᵢ (/ Σ wᵢ if normalize)",
        paper="Deep et al. 2024, DELLA-Merging (arXiv:2406.11617)",
        params={**gta.params(normalize=elect, rescale=True, epsilon=EPSILON), "seed": gta.SEED},
        merge=merge,
        whole=lambda params: True,  # per-row ranks and L1 norms over the whole tensor
    )


METHOD = _method("della", elect=True)
LINEAR_METHOD = _method("della_linear", elect=False)
