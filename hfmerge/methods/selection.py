"""Exact top-k thresholds over streams of |τ| values, without ever holding the stream.

A task keeps the entries whose magnitude is at least the k-th smallest value, with
k = n − ⌊n·density⌋ (the rule of the TIES reference code, ``kthvalue`` on |τ|). For values
that fit in memory :func:`kth_smallest` uses ``torch.kthvalue``; for a stream (a whole model, or a
tensor read in chunks) :class:`RadixSelect` finds the same value exactly in two passes: non-negative
float32 values order like their bit patterns, so a histogram of the high 16 bits finds the bucket of
the k-th value and a histogram of the low 16 bits inside that bucket finds the value itself. Memory:
two 64 Ki-entry int64 histograms per task.
"""

from __future__ import annotations

import math

import torch

_BINS = 1 << 16


def rank_for_density(n: int, density: float) -> int:
    """1-based rank of the threshold among n ascending values (0 means keep everything)."""
    return n - math.floor(n * density)


def kth_smallest(values: torch.Tensor, k: int) -> float:
    """The k-th smallest (1-based) of ``values``; 0.0 when k == 0 (everything is kept).

    Exact, and faster than a full ``kthvalue``: a strided sample brackets the answer, one comparison pass
    counts what lies below the bracket, and ``kthvalue`` runs only on the few values inside it (falling
    back to the whole tensor if the bracket missed)."""
    if k <= 0:
        return 0.0
    flat = values.reshape(-1)
    n = flat.numel()
    if n <= _SAMPLE * 4:
        return float(flat.float().kthvalue(k).values)
    sample = flat[:: n // _SAMPLE].float()
    m = sample.numel()
    margin = 4 * int(m**0.5) + 16
    pos = k * m // n
    lo = sample.kthvalue(max(0, pos - margin) + 1).values
    hi = sample.kthvalue(min(m - 1, pos + margin) + 1).values
    below = int(torch.count_nonzero(flat < lo))
    inside = flat[(flat >= lo) & (flat <= hi)]
    if below < k <= below + inside.numel():
        return float(inside.float().kthvalue(k - below).values)
    return float(flat.float().kthvalue(k).values)


_SAMPLE = 1 << 16


def _bits(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1).float().contiguous().view(torch.int32)


class RadixSelect:
    """Streaming exact k-th smallest of non-negative float32 values.

    Pass 1 counts the high 16 bits of every value. Given a ``guess`` of the answer's high bits (e.g. from a
    sample), it also counts the low 16 bits of the values whose high bits lie within ``window`` buckets of
    it; when the answer falls there (the usual case) it is known after one pass, otherwise a second pass
    (:meth:`feed_low`) counts the low bits inside the answer's bucket."""

    def __init__(self, guess: int | None = None, window: int = 8) -> None:
        self.high = torch.zeros(_BINS, dtype=torch.int64)
        self.n = 0
        self._lo = None if guess is None else max(0, guess - window)
        self._span = 2 * window + 1
        self.near = None if guess is None else torch.zeros(self._span * _BINS, dtype=torch.int64)
        self.low = torch.zeros(_BINS, dtype=torch.int64)
        self._bucket: int | None = None
        self._k = 0
        self._resolved = False

    def feed_high(self, values: torch.Tensor) -> None:
        """First pass: count the high 16 bits of every value (and the low bits near the guess)."""
        bits = _bits(values).cpu()
        self.high += torch.bincount(bits >> 16, minlength=_BINS)
        self.n += values.numel()
        if self.near is not None:  # bits relative to the window's first bucket: (bucket - lo) << 16 | low bits
            rel = bits - (self._lo << 16)
            self.near += torch.bincount(rel[(rel >= 0) & (rel < self.near.numel())], minlength=self.near.numel())

    def choose_bucket(self, k: int) -> bool:
        """After the first pass: fix the bucket of the k-th value. False when no second pass is needed."""
        self._k = k
        if k <= 0:
            return False
        cum = torch.cumsum(self.high, 0)
        self._bucket = int(torch.searchsorted(cum, torch.tensor(k)))
        self._k = k - (int(cum[self._bucket - 1]) if self._bucket else 0)
        if self._lo is not None and 0 <= self._bucket - self._lo < self._span:
            i = self._bucket - self._lo
            self.low = self.near[i * _BINS:(i + 1) * _BINS]
            self._resolved = True
        return not self._resolved

    def feed_low(self, values: torch.Tensor) -> None:
        """Second pass: count the low 16 bits of the values inside the chosen bucket."""
        if self._resolved or self._bucket is None:
            return
        bits = _bits(values).cpu()
        inside = bits[(bits >> 16) == self._bucket] & 0xFFFF
        self.low += torch.bincount(inside, minlength=_BINS)

    def value(self) -> float:
        if self._bucket is None:
            return 0.0
        low = int(torch.searchsorted(torch.cumsum(self.low, 0), torch.tensor(self._k)))
        bits = torch.tensor([(self._bucket << 16) | low], dtype=torch.int32)
        return float(bits.view(torch.float32))


def high_bits(value: float) -> int:
    """The radix bucket (high 16 bits) of a non-negative float32."""
    return int(torch.tensor([value], dtype=torch.float32).view(torch.int32)) >> 16
