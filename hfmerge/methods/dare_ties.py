"""DARE-TIES (Yu et al., 2024, "Language models are Super Mario"; TIES sign election of Yadav et al., 2023),
as mergekit's ``dare_ties``: random drop, L1 rescale, sign election."""

import torch

from hfmerge.methods import gta, steps
from hfmerge.methods.base import Chunk, Method


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """τ̃ᵢ = rescale(τᵢ ⊙ Bernoulli(dᵢ));  γ = sign(Σ wᵢτ̃ᵢ);  θ = θ₀ + λ Σ_{sign = γ} wᵢτ̃ᵢ [/ Σ wᵢ]."""
    return gta.merge(chunk, params, steps.bernoulli(params["density"]), elect=True)


METHOD = Method(
    name="dare_ties",
    summary="DARE-TIES: random drop with keep rate d, L1 rescale, TIES sign election (mergekit's dare_ties)",
    formula="τ̃ᵢ = τᵢ⊙Bernoulli(d)·‖τᵢ‖₁/‖τᵢ⊙Bernoulli(d)‖₁;  γ = sign(Σ wᵢτ̃ᵢ);  "
            "θ = θ₀ + λ·Σ_{sign(τ̃ᵢ)=γ} wᵢτ̃ᵢ (/ Σ_{sign=γ} wᵢ if normalize)",
    paper="Yu et al. 2024, Language Models are Super Mario (arXiv:2311.03099); Yadav et al. 2023, TIES-Merging "
          "(arXiv:2306.01708)",
    params={**gta.params(normalize=False, rescale=True), "seed": gta.SEED},
    merge=merge,
    whole=lambda params: bool(params.get("rescale")),  # the L1 norms are over the whole tensor
)


def merge_linear(chunk: Chunk, params: dict) -> torch.Tensor:
    """τ̃ᵢ = rescale(τᵢ ⊙ Bernoulli(dᵢ));  θ = θ₀ + λ Σ wᵢτ̃ᵢ [/ Σ wᵢ]."""
    return gta.merge(chunk, params, steps.bernoulli(params["density"]), elect=False)


LINEAR_METHOD = Method(
    name="dare_linear",
    summary="DARE as mergekit's dare_linear: random drop with keep rate d, L1 rescale, weighted sum",
    formula="τ̃ᵢ = τᵢ⊙Bernoulli(d)·‖τᵢ‖₁/‖τᵢ⊙Bernoulli(d)‖₁;  θ = θ₀ + λ·Σ wᵢτ̃ᵢ (/ Σ wᵢ if normalize)",
    paper="Yu et al. 2024, Language Models are Super Mario (arXiv:2311.03099)",
    params={**gta.params(normalize=False, rescale=True), "seed": gta.SEED},
    merge=merge_linear,
    whole=lambda params: bool(params.get("rescale")),
)
