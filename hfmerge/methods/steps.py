"""Composable task-vector transforms shared by the methods.

A task-vector merge is θ₀ + λ·combine(sparsify(τ)). A step sparsifies or elects IN PLACE on the
stacked task vectors τ [N, …] (zeroing dropped entries, rescaling kept ones) and returns the boolean
selection so far (or None: everything); combiners reduce over the task axis. Each is a few lines,
tested once, and TIES, DARE, Consensus and Localize-and-Stitch are short pipelines of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from hfmerge.methods.base import Chunk

Mask = torch.Tensor | None
Step = Callable[[torch.Tensor, Mask, Chunk], Mask]
Combine = Callable[[torch.Tensor, Mask], torch.Tensor]

RNG_BLOCK = 1 << 20  # DARE draws its randomness per block of this many elements of a tensor


def _select(taus: torch.Tensor, m: Mask, keep: torch.Tensor) -> torch.Tensor:
    """Zero τ where ``keep`` is False; the selection becomes m ∧ keep."""
    taus.mul_(keep)
    return keep if m is None else m & keep


def _per_task(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device, like.dtype).view(-1, *[1] * (like.dim() - 1))


def topk(key: str) -> Step:
    """Trim (TIES) / localize (L&S): keep |τᵢ| ≥ tᵢ, the per-task threshold of Quantile ``key``."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> torch.Tensor:
        return _select(taus, m, taus.abs() >= _per_task(chunk.thresholds[key], taus))

    return step


def block_seed(seed: int, name: str, task: int, block: int) -> int:
    digest = hashlib.blake2b(f"{seed}|{name}|{task}|{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def dare_keep(seed: int, name: str, task: int, offset: int, numel: int, drop_rate: float) -> torch.Tensor:
    """Bernoulli(1−p) keep-mask for elements [offset, offset+numel) of one task's tensor.

    Each element gets a 15-bit uniform u (a quarter of a 64-bit draw, top bit dropped) and is kept when
    u ≥ round(p·2¹⁵): p acts at 2⁻¹⁵ resolution, three times cheaper than a float draw per element.
    Draws are made per fixed block of RNG_BLOCK elements from a generator seeded by (seed, tensor name,
    task, block), so the mask depends on nothing but the seed and the element's position: not on chunk
    size, thread count or device."""
    first, last = offset // RNG_BLOCK, (offset + numel - 1) // RNG_BLOCK
    cut = round(drop_rate * (1 << 15))
    parts = []
    gen = torch.Generator()
    for b in range(first, last + 1):
        gen.manual_seed(block_seed(seed, name, task, b))
        start = max(offset, b * RNG_BLOCK) - b * RNG_BLOCK
        stop = min(offset + numel, (b + 1) * RNG_BLOCK) - b * RNG_BLOCK
        words = torch.empty((stop + 3) // 4, dtype=torch.int64).random_(generator=gen)  # a prefix of the block's
        parts.append(words.view(torch.int16)[start:stop].bitwise_and(0x7FFF) >= cut)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def dare(drop_rate: float) -> Step:
    """DARE: drop each entry with probability p, rescale survivors by 1/(1−p)."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> torch.Tensor:
        keep = torch.stack([
            dare_keep(chunk.seed, chunk.name, i, chunk.offset, taus[i].numel(), drop_rate).view(taus.shape[1:])
            for i in range(taus.shape[0])
        ]).to(taus.device)
        m = _select(taus, m, keep)
        taus.div_(1.0 - drop_rate)
        return m

    return step


def consensus(mask_lambda: float, k: int) -> Step:
    """TALL masks mᵢ = 1{|τᵢ| > λ·|τ_MTL − τᵢ|}, τ_MTL = Σ τᵢ; keep entries where Σ mᵢ ≥ k (for all tasks)."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> torch.Tensor:
        mtl = taus.sum(0)
        votes = (taus.abs() > (mtl - taus).abs_().mul_(mask_lambda)).sum(0)
        return _select(taus, m, (votes >= k).expand_as(taus))

    return step


def elect_sign(taus: torch.Tensor, m: Mask, chunk: Chunk) -> torch.Tensor:
    """TIES sign election: γ = sign(Σ τ̂ᵢ); keep the entries whose sign agrees with γ (γ = 0 keeps none)."""
    gamma = taus.sum(0).sign_()
    return _select(taus, m, taus.sign() == gamma)


def combine_sum(taus: torch.Tensor, m: Mask) -> torch.Tensor:
    """Σᵢ τ̂ᵢ."""
    return taus.sum(0)


def combine_disjoint_mean(taus: torch.Tensor, m: Mask) -> torch.Tensor:
    """Σᵢ τ̂ᵢ / max(1, #{i selected}): the TIES disjoint mean and the L&S overlap-normalised stitch."""
    if m is None:
        return taus.mean(0)
    return taus.sum(0).div_(m.sum(0).clamp_min_(1))


def task_vector_merge(chunk: Chunk, steps: list[Step], combine: Combine, scaling: float = 1.0) -> torch.Tensor:
    """θ₀ + λ·combine(steps(τ))."""
    taus = chunk.task_vectors()
    m: Mask = None
    for step in steps:
        m = step(taus, m, chunk)
    delta = combine(taus, m)
    if scaling != 1.0:
        delta *= scaling
    return delta.add_(chunk.base)
