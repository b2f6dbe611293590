"""Model Breadcrumbs (Davari & Belilovsky, 2024, "Model Breadcrumbs: scaling multi-task model merging with
sparse masks"), as mergekit's ``breadcrumbs`` and ``breadcrumbs_ties``: drop the largest outliers and the
smallest magnitudes of each task vector."""

import torch

from hfmerge.methods import gta, steps
from hfmerge.methods.base import Chunk, Method, Param

GAMMA = Param(0.01, "γ, the fraction of the largest |τᵢ| dropped as outliers", low=0.0, high=1.0, high_open=True)
FORMULA = "τ̃ᵢ = τᵢ ⊙ 1{{|τᵢ| among the ⌊d·n⌋ largest below the top ⌊γ·n⌋}}{ties};  θ = θ₀ + λ·Σ wᵢτ̃ᵢ (/ Σ wᵢ)"
PAPER = "Davari & Belilovsky 2024, Model Breadcrumbs (arXiv:2312.06795)"


def _method(name: str, elect: bool) -> Method:
    def merge(chunk: Chunk, params: dict) -> torch.Tensor:
        return gta.merge(chunk, params, steps.magnitude_band(params["density"], params["gamma"]), elect=elect)

    return Method(
        name=name,
        summary="Model Breadcrumbs: drop the top-γ outliers and keep the next d of |τᵢ|"
                + (", then TIES sign election" if elect else ""),
        formula=FORMULA.format(ties="; γₛ = sign(Σ wᵢτ̃ᵢ), keep sign(τ̃ᵢ) = γₛ" if elect else ""),
        paper=PAPER + ("; Yadav et al. 2023, TIES-Merging (arXiv:2306.01708)" if elect else ""),
        params=gta.params(normalize=False, rescale=False, gamma=GAMMA),
        merge=merge,
        whole=lambda params: True,  # ranks over the whole tensor
    )


METHOD = _method("breadcrumbs", elect=False)
TIES_METHOD = _method("breadcrumbs_ties", elect=True)
