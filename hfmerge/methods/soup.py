"""Model Soup (Wortsman et al., 2022, "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time")."""

import torch

from hfmerge.methods.base import Chunk, Method


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """θ = Σ wᵢθᵢ / Σ wᵢ (the plain mean with unit weights)."""
    total = sum(chunk.weights)
    out = torch.zeros_like(chunk.base)
    for w, theta in zip(chunk.weights, chunk.experts, strict=True):
        out.add_(theta, alpha=w / total)
    return out


METHOD = Method(
    name="soup",
    summary="Model Soup: the (weighted) mean of the experts",
    formula="θ = Σ wᵢθᵢ / Σ wᵢ",
    paper="Wortsman et al. 2022, Model soups (arXiv:2203.05482)",
    params={},
    merge=merge,
)
