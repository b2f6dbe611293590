"""What a method is: a pure function of fp32 tensors, a parameter schema, and the passes it needs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from hfmerge import suggest
from hfmerge.errors import HfMergeError


@dataclass
class Chunk:
    """A row range of one tensor, as every method sees it (all fp32, same shape)."""

    name: str  # tensor name in the checkpoint
    offset: int  # flat index of this chunk's first element within the tensor
    base: torch.Tensor
    experts: torch.Tensor  # [N, *shape]
    weights: list[float]
    seed: int = 0
    thresholds: dict[str, torch.Tensor] = field(default_factory=dict)  # Quantile.key -> [N] thresholds
    stats: list[torch.Tensor | None] | None = None  # per expert: its statistics for this chunk (or tensor)
    memo: dict = field(default_factory=dict)  # per-tensor scratch a method may reuse across its chunks
    _taus: torch.Tensor | None = field(default=None, repr=False)

    def rows(self, first: int, count: int) -> Chunk:
        """Rows [first, first + count) of this chunk as a chunk sharing its memory (and τ, once computed)."""
        rows = slice(first, first + count)
        return replace(self, offset=self.offset + first * self.base[0].numel(), base=self.base[rows],
                       experts=self.experts[:, rows], _taus=None if self._taus is None else self._taus[:, rows],
                       stats=None if self.stats is None else [s if s is None else s[rows] for s in self.stats])

    def task_vectors(self) -> torch.Tensor:
        """τᵢ = wᵢ·(θᵢ − θ₀), stacked as [N, *shape]: computed once, IN PLACE over ``experts`` (the chunk owns
        its fp32 rows; after this call ``experts`` holds τ and methods use only the returned tensor)."""
        if self._taus is None:
            self._taus = self.experts.sub_(self.base)
            if any(w != 1.0 for w in self.weights):
                self._taus *= torch.tensor(self.weights, dtype=self._taus.dtype,
                                           device=self._taus.device).view(-1, *[1] * self.base.dim())
        return self._taus


@dataclass(frozen=True)
class Quantile:
    """A streaming pass a step needs: per task, the threshold that keeps the top ``density`` of |τᵢ|
    over one tensor (scope ``tensor``) or over every merged tensor of the model (scope ``global``)."""

    key: str
    density: float
    scope: str


@dataclass(frozen=True)
class Stats:
    """Per-expert statistics a method needs: ``kind`` (fisher | regmean | masks), whether they are read
    by row chunks like the weights (``elementwise``) or whole per tensor (RegMean's [in, in] Grams), and
    the settings that produce them (passed to hfmerge.stats.store.compute_stats)."""

    kind: str
    elementwise: bool
    settings: dict


@dataclass(frozen=True)
class Spectral:
    """How a method merges a matrix it must see whole (SVD methods), in memory independent of the number of
    experts: the engine gathers the input of ``finish`` and writes θ = θ₀ + finish(…) for the tensors where
    ``applies(name, shape)``; every other tensor goes through ``merge`` by row chunks as usual.

    Exactly one of: ``rows(chunk, params)``: rows of the matrix to decompose (e.g. Σ τᵢ, a merged task vector)
    from a row chunk of every model, gathered into one fp32 buffer D on the device, then ``finish(D, params)``;
    or ``expert(name, τᵢ, i, n, params)``: one expert's whole task vector at a time (read alone, wᵢ applied) reduced to
    a part (e.g. its top singular triplets), then ``finish([parts], params)``. ``finish`` returns Δ (λ included).
    Peak memory ≈ a few × the matrix (D or τᵢ, θ₀, the SVD's factors), never N × it. ``rule`` names the rule in
    merge_report.json."""

    rule: str
    applies: Callable[[str, tuple[int, ...]], bool]
    finish: Callable[[object, dict], torch.Tensor]
    rows: Callable[[Chunk, dict], torch.Tensor] | None = None
    expert: Callable[[str, torch.Tensor, int, int, dict], object] | None = None


@dataclass(frozen=True)
class Param:
    """One method parameter: default, type, and the interval or choices it must lie in."""

    default: float | int | str | None
    help: str
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return ("(" if self.low_open or self.low is None else "[") + f"{lo}, {hi}" + (
            ")" if self.high_open or self.high is None else "]"
        )

    def check(self, method: str, name: str, value: object) -> object:
        where = f"{method} parameter {name}={value!r}"
        if self.choices:
            if value not in self.choices:
                near = suggest.close_matches(str(value), self.choices)
                raise HfMergeError(f"{where} is not one of {', '.join(self.choices)}"
                                   + (f" (did you mean {near[0]}?)" if near else ""))
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HfMergeError(f"{where} must be a number in {self.describe()}")
        if self.kind is int:
            if float(value) != int(value):
                raise HfMergeError(f"{where} must be an integer")
            value = int(value)
        else:
            value = float(value)
        bad = not math.isfinite(value)
        bad |= self.low is not None and (value < self.low or (self.low_open and value == self.low))
        bad |= self.high is not None and (value > self.high or (self.high_open and value == self.high))
        if bad:
            raise HfMergeError(f"{where} is out of range: it must lie in {self.describe()}")
        return value


@dataclass(frozen=True)
class Method:
    """A merge method. ``merge(chunk, params)`` is pure tensor math; ``quantiles(params)`` lists the
    streaming top-k passes it needs before merging.

    By default chunks may be any row range. ``whole(params)`` True declares that the method needs whole
    tensors (SVD methods, per-tensor statistics of τ): the engine then hands ``merge`` every merged tensor as
    ONE chunk (offset 0) holding the whole tensor of the base and of every expert, fp32 on the merge's
    device; peak memory ≈ (N + 1) × that tensor plus the method's workspace (and the next tensor, read ahead).
    ``spectral(params)`` (a :class:`Spectral`) is the bounded-memory form for matrices."""

    name: str
    summary: str
    formula: str
    paper: str
    params: dict[str, Param]
    merge: Callable[[Chunk, dict], torch.Tensor]
    quantiles: Callable[[dict], list[Quantile]] = lambda params: []
    weighted: bool = True
    min_experts: int = 1
    max_experts: int | None = None
    stats: Callable[[dict], Stats | None] = lambda params: None
    whole: Callable[[dict], bool] = lambda params: False
    spectral: Callable[[dict], Spectral | None] = lambda params: None

    def resolve(self, given: dict) -> dict:
        """Defaults filled in, unknown names and out-of-range values refused."""
        unknown = sorted(set(given) - set(self.params))
        if unknown and not self.params:
            raise HfMergeError(f"method {self.name} takes no parameters (got {unknown[0]!r})")
        if unknown:
            raise suggest.unknown("parameter", unknown[0], self.params, f" for method {self.name}")
        return {k: p.check(self.name, k, given.get(k, p.default)) if (k in given or p.default is not None)
                else None for k, p in self.params.items()}
