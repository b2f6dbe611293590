"""Composable task-vector transforms shared by the methods.

A task-vector merge is θ₀ + λ·combine(sparsify(τ)). A step sparsifies or elects IN PLACE on the
stacked task vectors τ [N, …] (zeroing dropped entries, rescaling kept ones) and returns the boolean
selection so far (or None: everything); combiners reduce over the task axis. Each is a few lines,
tested once, and TIES, DARE, Consensus and Localize-and-Stitch are short pipelines of them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

import torch

from hfmerge.methods.base import Chunk
from hfmerge.methods.selection import kth_smallest

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
    return uniform15(seed, name, task, offset, numel) >= round(drop_rate * (1 << 15))


def uniform15(seed: int, name: str, task: int, offset: int, numel: int) -> torch.Tensor:
    """15-bit uniforms (int16 in [0, 2¹⁵)) for elements [offset, offset+numel) of one task's tensor: a quarter
    of a 64-bit draw each (top bit dropped), drawn per block of RNG_BLOCK elements from a generator seeded by
    (seed, tensor name, task, block)."""
    first, last = offset // RNG_BLOCK, (offset + numel - 1) // RNG_BLOCK
    parts = []
    gen = torch.Generator()
    for b in range(first, last + 1):
        gen.manual_seed(block_seed(seed, name, task, b))
        start = max(offset, b * RNG_BLOCK) - b * RNG_BLOCK
        stop = min(offset + numel, (b + 1) * RNG_BLOCK) - b * RNG_BLOCK
        words = torch.empty((stop + 3) // 4, dtype=torch.int64).random_(generator=gen)  # a prefix of the block's
        parts.append(words.view(torch.int16)[start:stop].bitwise_and(0x7FFF))
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


def per_task(value: float | Sequence[float], n: int) -> list[float]:
    """A parameter given once or per task (a tuple), as one value per task."""
    return list(value) if isinstance(value, tuple | list) else [value] * n


def _rank_value(mags: torch.Tensor, k: int) -> float:
    """The k-th smallest (1-based) of a task's magnitudes; −inf below rank 1, +inf from rank n on."""
    if k <= 0:
        return -math.inf
    return math.inf if k >= mags.numel() else kth_smallest(mags, k)


def magnitude_band(density: float | Sequence[float], gamma: float | Sequence[float] = 0.0) -> Step:
    """Magnitude pruning over the WHOLE tensor (the chunk must be one): per task, of n entries, keep the
    t = ⌊d·n⌋ largest |τᵢ| after dropping the ⌊γ·n⌋ largest (Model Breadcrumbs; γ = 0: TIES trimming), i.e. the
    ranks (n_bot, n_bot + t] in ascending order, n_bot = max(0, n − t − ⌊γ·n⌋); d ≥ 1 keeps everything."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> Mask:
        keep = torch.ones_like(taus, dtype=torch.bool)
        for i, (d, g) in enumerate(zip(per_task(density, len(taus)), per_task(gamma, len(taus)), strict=True)):
            if d >= 1:
                continue
            mags, n = taus[i].abs(), taus[i].numel()
            target = max(1, math.floor(d * n)) if d > 0 else 0
            bottom = max(0, n - target - math.floor(g * n))
            keep[i] = (mags > _rank_value(mags, bottom)) & (mags <= _rank_value(mags, bottom + target))
        return _select(taus, m, keep)

    return step


def bernoulli(density: float | Sequence[float]) -> Step:
    """Random pruning (DARE's drop, without its 1/(1−p) rescale): keep each entry of τᵢ with probability dᵢ
    (seeded per tensor, task and block of elements, as :func:`dare_keep`); d ≥ 1 keeps everything."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> Mask:
        keep = torch.ones_like(taus, dtype=torch.bool)
        for i, d in enumerate(per_task(density, len(taus))):
            if d < 1:
                keep[i] = dare_keep(chunk.seed, chunk.name, i, chunk.offset, taus[i].numel(),
                                    1.0 - d).view(taus.shape[1:]).to(taus.device)
        return _select(taus, m, keep)

    return step


def della_keep(density: float | Sequence[float], epsilon: float | Sequence[float]) -> Step:
    """DELLA's MagPrune over the WHOLE tensor: within each row (a vector is one row), the entry of ascending
    magnitude rank r of c gets keep probability pᵣ = d − ε + 2ε·(r − 1)/(c − 1); kept entries are drawn from
    seeded 15-bit uniforms (keep when u < pᵣ·2¹⁵)."""

    def step(taus: torch.Tensor, m: Mask, chunk: Chunk) -> Mask:
        keep = torch.ones_like(taus, dtype=torch.bool)
        for i, (d, e) in enumerate(zip(per_task(density, len(taus)), per_task(epsilon, len(taus)), strict=True)):
            if d >= 1:
                continue
            rows = taus[i].reshape(1, -1) if taus[i].dim() < 2 else taus[i].reshape(taus[i].shape[0], -1)
            ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32)  # 0-based ascending rank
            cols = rows.shape[1]
            probs = (d - e) + (ranks / (cols - 1) if cols > 1 else torch.zeros_like(ranks)) * (2 * e)
            u = uniform15(chunk.seed, chunk.name, i, chunk.offset, rows.numel()).view_as(rows).to(rows.device)
            keep[i] = (u < probs * (1 << 15)).view(taus.shape[1:])
        return _select(taus, m, keep)

    return step


def l1_rescaled(step: Step) -> Step:
    """Run a pruning step, then scale each task's survivors so that ‖τ̃ᵢ‖₁ = ‖τᵢ‖₁ over the WHOLE tensor
    (mergekit's ``rescale``; left unscaled where either norm is below 1e-7)."""

    def wrapped(taus: torch.Tensor, m: Mask, chunk: Chunk) -> Mask:
        dims = tuple(range(1, taus.dim()))
        before = taus.abs().sum(dims) if dims else taus.abs()
        m = step(taus, m, chunk)
        after = taus.abs().sum(dims) if dims else taus.abs()
        scale = torch.where((before >= 1e-7) & (after >= 1e-7), before / after.clamp_min(1e-30), 1.0)
        taus.mul_(_per_task(scale, taus))
        return m

    return wrapped


def combine_normalized(weights: Sequence[float], consensus: bool) -> Combine:
    """mergekit's ``normalize``: Σᵢ τ̂ᵢ / Σᵢ wᵢ (linear combination), or with sign consensus per entry
    Σᵢ τ̂ᵢ / Σᵢ wᵢ·1{i selected} (a divisor of 0 is taken as 1)."""

    def combine(taus: torch.Tensor, m: Mask) -> torch.Tensor:
        if consensus and m is not None:
            w = _per_task(torch.tensor(weights, dtype=taus.dtype), taus)
            divisor = (m * w).sum(0)
            divisor[divisor == 0] = 1
            return taus.sum(0).div_(divisor)
        total = sum(weights)
        return taus.sum(0).div_(total if abs(total) >= 1e-8 else 1.0)

    return combine


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
