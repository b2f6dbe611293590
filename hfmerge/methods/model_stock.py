"""Model Stock (Jang et al., 2024, "Model Stock: all we need is just a few fine-tuned models"), with
mergekit's estimate of the angle for more than two experts (the mean pairwise cosine of the task vectors)."""

import torch

from hfmerge.errors import HfMergeError
from hfmerge.methods.base import Chunk, Method


def merge(chunk: Chunk, params: dict) -> torch.Tensor:
    """cos θ = mean_{i<j} ⟨τᵢ, τⱼ⟩/(‖τᵢ‖‖τⱼ‖) over the whole tensor;  t = N cos θ / (1 + (N−1) cos θ);
    θ = θ₀ + t·mean(τᵢ)."""
    taus = chunk.task_vectors().reshape(chunk.experts.shape[0], -1)
    n = taus.shape[0]
    if n < 2:
        raise HfMergeError(f"model_stock needs at least 2 experts, got {n}")
    t64 = taus.double()
    norms = torch.linalg.vector_norm(t64, dim=1)
    gram = t64 @ t64.T
    cos = [float((gram[i, j] / (norms[i] * norms[j]).clamp_min(1e-6)).clamp(-1, 1))
           for i in range(n) for j in range(i + 1, n)]
    c = sum(cos) / len(cos)
    denominator = 1 + (n - 1) * c
    if abs(denominator) < 1e-6:
        raise HfMergeError(f"model_stock on {chunk.name}: the task vectors' mean cosine {c:.6f} = −1/(N−1) makes "
                           "t = N cos/(1 + (N−1) cos) infinite; drop an expert or use another method")
    t = n * c / denominator
    chunk.memo["model_stock_t"] = t
    return taus.mean(0).mul_(t).view_as(chunk.base).add_(chunk.base)


METHOD = Method(
    name="model_stock",
    summary="Model Stock: move from the base toward the experts' mean by t from their task vectors' angle",
    formula="cos θ = mean_{i<j} cos(τᵢ, τⱼ) per tensor;  t = N cos θ/(1 + (N−1) cos θ);  θ = θ₀ + t·mean(τᵢ)",
    paper="Jang et al. 2024, Model Stock (arXiv:2403.19522)",
    params={},
    merge=merge,
    weighted=False,
    min_experts=2,
    whole=lambda params: True,  # the angle is between whole task vectors
)
