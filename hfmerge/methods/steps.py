"""Composable task-vector transforms shared by the methods.

A task-vector merge is θ₀ + λ·combine(sparsify(τ)). Sparsifiers and the sign election map
(τ [N, …], m [N, …] | None) to a new multiplier tensor m (0 drops an entry, 1 keeps it, 1/(1−p)
keeps and rescales); combiners reduce (τ, m) over the task axis. Each is a few lines, tested once,
and TIES, DARE, Consensus and Localize-and-Stitch are short pipelines of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from hfmerge.methods.base import Chunk

Mask = torch.Tensor | None
Step = Callable[[torch.Tensor, Mask, Chunk], torch.Tensor]
Combine = Callable[[torch.Tensor, Mask], torch.Tensor]

RNG_BLOCK = 1 << 20  # DARE draws its randomness per block of this many elements of a tensor


def _and(m: Mask, new: torch.Tensor) -> torch.Tensor:
    new = new.to(torch.float32)
    return new if m is None else m * new


def _per_task(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, *[1] * (like.dim() - 1))


def topk(key: str) -> Step:
    """Trim (TIES) / localize (L&S): keep |τᵢ| ≥ tᵢ, the per-task threshold of Quantile ``key``."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> torch.Tensor:
        return _and(m, taus.abs() >= _per_task(chunk.thresholds[key], taus))

    return step


def block_seed(seed: int, name: str, task: int, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}|{name}|{task}|{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dare_keep(seed: int, name: str, task: int, offset: int, numel: int, drop_rate: float) -> torch.Tensor:
    """Bernoulli(1−p) keep-mask for elements [offset, offset+numel) of one task's tensor.

    Uniforms are drawn per fixed block of RNG_BLOCK elements from a generator seeded by
    (seed, tensor name, task, block), so the mask depends on nothing but the seed and the element's
    position: not on chunk size, thread count or device."""
    first, last = offset // RNG_BLOCK, (offset + numel - 1) // RNG_BLOCK
    parts = []
    gen = torch.Generator()
    for b in range(first, last + 1):
        gen.manual_seed(block_seed(seed, name, task, b))
        start = max(offset, b * RNG_BLOCK) - b * RNG_BLOCK
        stop = min(offset + numel, (b + 1) * RNG_BLOCK) - b * RNG_BLOCK
        parts.append(torch.rand(RNG_BLOCK, generator=gen)[start:stop])
    return torch.cat(parts) >= drop_rate


def dare(drop_rate: float) -> Step:
    """DARE: drop each entry with probability p, rescale survivors by 1/(1−p)."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> torch.Tensor:
        keep = torch.stack([
            dare_keep(chunk.seed, chunk.name, i, chunk.offset, taus[i].numel(), drop_rate).view(taus.shape[1:])
            for i in range(taus.shape[0])
        ]).to(taus.device)
        return _and(m, keep) / (1.0 - drop_rate)

    return step


def consensus(mask_lambda: float, k: int) -> Step:
    """TALL masks mᵢ = 1{|τᵢ| > λ·|τ_MTL − τᵢ|}, τ_MTL = Σ τᵢ; keep entries where Σ mᵢ ≥ k (for all tasks)."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> torch.Tensor:
        mtl = taus.sum(0)
        votes = (taus.abs() > mask_lambda * (mtl - taus).abs()).sum(0)
        return _and(m, (votes >= k).expand_as(taus))

    return step


def elect_sign(taus: torch.Tensor, m: Mask, chunk: Chunk) -> torch.Tensor:
    """TIES sign election: γ = sign(Σ mᵢτᵢ); keep the entries whose sign agrees with γ (γ = 0 keeps none)."""
    kept = taus if m is None else taus * m
    gamma = kept.sum(0).sign()
    return _and(m, taus.sign() == gamma)


def combine_sum(taus: torch.Tensor, m: Mask) -> torch.Tensor:
    """Σᵢ mᵢτᵢ."""
    return taus.sum(0) if m is None else (taus * m).sum(0)


def combine_disjoint_mean(taus: torch.Tensor, m: Mask) -> torch.Tensor:
    """Σᵢ mᵢτᵢ / max(1, #{i: mᵢ ≠ 0}): the TIES disjoint mean and the L&S overlap-normalised stitch."""
    if m is None:
        return taus.mean(0)
    return (taus * m).sum(0) / (m != 0).sum(0).clamp_min(1)


def task_vector_merge(chunk: Chunk, steps: list[Step], combine: Combine, scaling: float = 1.0) -> torch.Tensor:
    """θ₀ + λ·combine(τ, steps(τ))."""
    taus = chunk.task_vectors()
    m: Mask = None
    for step in steps:
        m = step(taus, m, chunk)
    delta = combine(taus, m)
    if scaling != 1.0:
        delta *= scaling
    return delta.add_(chunk.base)
