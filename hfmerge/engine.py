"""The streaming merge core: validate, plan, run the declared selection passes, stream every tensor through
the method in fp32 row chunks into a writer. The merge job around it (opening sources, statistics, the
output folder, report and card) is hfmerge.job.

Peak memory ≈ (N + 1) input chunks in fp32 plus the method's temporaries (a few × N chunks), and the
next chunk, read and converted ahead in a reader thread: it depends on ``chunk_numel`` and the number of experts,
never on the model size. A method declaring ``Method.whole`` gets each merged tensor as one chunk (offset 0,
the whole tensor of every model, fp32 on the device): its peak is ≈ (N + 1) × the largest merged tensor.
"""

from __future__ import annotations

import ctypes
import fnmatch
import resource
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from hfmerge.config import MergeConfig
from hfmerge.errors import HfMergeError
from hfmerge.mergekit_config import TensorParameters
from hfmerge.methods.base import Chunk, Method, Quantile
from hfmerge.methods.registry import get_method
from hfmerge.methods.selection import RadixSelect, high_bits, kth_smallest, rank_for_density
from hfmerge.sources import DTYPE_NAMES, DTYPES, FLOAT_DTYPES, Checkpoint, TensorInfo
from hfmerge.writer import MemoryWriter, OutTensor, ShardWriter

DEFAULT_CHUNK_NUMEL = 1 << 19
WHOLE_TOPK_CHUNKS = 2  # a tensor of up to this many chunks gets its per-tensor top-k in memory, in one read
CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "intermediate_size",
               "num_attention_heads", "num_key_value_heads", "head_dim")


@dataclass(frozen=True)
class PlannedTensor:
    info: TensorInfo  # in the base
    merged: bool
    out_dtype: str
    whole: bool = False  # read in one piece: the method needs whole tensors, or its per-tensor top-k fits in memory
    spectral: bool = False  # a matrix of the method's Spectral rule (read and merged by _merge_spectral)


def density_of(q: Quantile, task: int) -> float:
    """A quantile's density for one task (per-expert densities come as a tuple)."""
    return q.density[task] if isinstance(q.density, tuple) else q.density


def reuse_freed_memory() -> None:
    """Ask glibc to keep freed chunk-sized blocks for reuse instead of unmapping them: otherwise every new
    chunk buffer is fresh pages, and page faults cost more than the arithmetic (measured: 1.5× the merge time).
    Process-wide, and one arena: the reader thread allocates the chunks the merging thread frees."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)
    libc.mallopt(m_arena_max, 1)  # one heap: blocks the reader allocates and the merger frees are reused by both


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def is_skipped(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


QUANTIZED_FIX = ("merging quantized weights is not supported: dequantize it to bf16 first (transformers: load it, "
                 "model.dequantize(), save_pretrained)")
LOW_PRECISION_FLOATS = ("F8_", "F6_", "F4")  # float8/6/4 dtypes only quantized checkpoints store


def refuse_quantized(base: Checkpoint, experts: list[Checkpoint], skip: list[str]) -> None:
    """Refuse quantized or non-float checkpoints: a ``quantization_config``, float8/6/4 tensors, or a tensor whose
    dtype class (float or not) differs from the base's. Otherwise such tensors would be copied from the base
    (non-float dtypes are never merged), and the output would quietly be the base for them."""
    for c in (base, *experts):
        qc = c.config.get("quantization_config") or (c.config.get("text_config") or {}).get("quantization_config")
        if qc:
            method = qc.get("quant_method", "?") if isinstance(qc, dict) else "?"
            raise HfMergeError(f"{c.ref}/config.json has a quantization_config (quant_method {method}): "
                               f"{QUANTIZED_FIX}")
    for n, t in base.tensors.items():
        if is_skipped(n, skip):
            continue
        if t.dtype.startswith(LOW_PRECISION_FLOATS):
            raise HfMergeError(f"{base.ref}/{t.file}: tensor {n} is {t.dtype} (quantized): {QUANTIZED_FIX}")
        for e in experts:
            et = e.tensors.get(n)
            if et is None or et.dtype == t.dtype or (et.dtype in FLOAT_DTYPES and t.dtype in FLOAT_DTYPES):
                continue
            if t.dtype in FLOAT_DTYPES or et.dtype in FLOAT_DTYPES:
                raise HfMergeError(f"{e.ref}/{et.file}: tensor {n} is {et.dtype} where the base {base.ref} has "
                                   f"{t.dtype}: {QUANTIZED_FIX}")
            raise HfMergeError(f"{e.ref}/{et.file}: tensor {n} is {et.dtype} where the base {base.ref} has {t.dtype}: "
                               "non-float tensors are copied from the base and must match it")


def validate(base: Checkpoint, experts: list[Checkpoint], skip: list[str]) -> list[str]:
    """Check the experts are fine-tunes of the base (and nothing is quantized); returns the names of the tensors
    to merge."""
    refuse_quantized(base, experts, skip)
    for e in experts:
        for key in CONFIG_KEYS:
            if base.config.get(key) != e.config.get(key):
                raise HfMergeError(
                    f"{e.ref} differs from the base {base.ref} in config {key} "
                    f"({e.config.get(key)!r} vs {base.config.get(key)!r}): experts must be fine-tunes of the base"
                )
    merged = [n for n, t in base.tensors.items() if t.dtype in FLOAT_DTYPES and not is_skipped(n, skip)]
    for e in experts:
        missing = [n for n in merged if n not in e.tensors]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise HfMergeError(f"{e.ref} lacks tensor {missing[0]}{more} that the base {base.ref} has")
        extra = [n for n in e.tensors if n not in base.tensors and not is_skipped(n, skip)]
        if extra:
            raise HfMergeError(f"{e.ref} has tensor {extra[0]} that the base {base.ref} lacks")
        for n in merged:
            a, b = base.tensors[n].shape, e.tensors[n].shape
            if a != b:
                if a[1:] == b[1:] and ("embed" in n or "lm_head" in n):
                    raise HfMergeError(
                        f"{n}: {e.ref} has {b[0]} rows, the base has {a[0]} (vocab sizes differ); keep embeddings "
                        "and lm_head from the base (the default skip) or resize the vocabularies first"
                    )
                raise HfMergeError(f"{n}: shape {list(b)} in {e.ref} differs from {list(a)} in the base {base.ref}")
    return merged


def resolve_dtype(config: MergeConfig, base: Checkpoint) -> str:
    name = config.dtype or base.config.get("dtype") or base.config.get("torch_dtype")
    if name in ("bfloat16", "float16", "float32"):
        return name
    floats = [t.dtype for t in base.tensors.values() if t.dtype in FLOAT_DTYPES]
    return {"BF16": "bfloat16", "F16": "float16"}.get(floats[0] if floats else "F32", "float32")


class Merger:
    """One merge run over opened checkpoints. Use :func:`hfmerge.job.merge` for the whole job."""

    def __init__(self, config: MergeConfig, base: Checkpoint, experts: list[Checkpoint], *,
                 stats: list[Checkpoint] | None = None, device: str = "cpu", chunk_numel: int = DEFAULT_CHUNK_NUMEL,
                 progress: bool = True):
        self.config, self.base, self.experts, self.stats = config, base, experts, stats
        self.method: Method = get_method(config.method)
        self.params = self.method.resolve(config.parameters)
        if not self.method.weighted and any(m.weight != 1.0 for m in config.models):
            raise HfMergeError(f"method {self.method.name} does not take per-model weights")
        if len(experts) < self.method.min_experts:
            raise HfMergeError(f"method {self.method.name} needs at least {self.method.min_experts} experts")
        if self.method.name == "consensus" and self.params["k"] > len(experts):
            raise HfMergeError(f"consensus parameter k={self.params['k']} exceeds the {len(experts)} experts")
        self.device = torch.device(device)
        self.chunk_numel = chunk_numel
        self.progress = progress
        self.weights = [m.weight for m in config.models]
        merged = set(validate(base, experts, config.skip))
        self.tensor_params = TensorParameters(config.per_tensor, self.method, self.params, self.weights, sorted(merged),
                                              base.config.get("num_hidden_layers")) if config.per_tensor else None
        self.out_dtype_name = resolve_dtype(config, base)
        out_dtype = DTYPE_NAMES[getattr(torch, self.out_dtype_name)]
        self.quantiles: list[Quantile] = self.method.quantiles(self.params)
        self.local = [q for q in self.quantiles if q.scope == "tensor"]  # per-tensor top-k thresholds
        self.whole_method = bool(self.method.whole(self.params))  # merge() gets each tensor as one chunk
        self.plan = [
            PlannedTensor(t, t.name in merged, out_dtype if t.dtype in FLOAT_DTYPES else t.dtype,
                          t.name in merged and (self.whole_method or bool(self.local) and (
                              t.numel <= WHOLE_TOPK_CHUNKS * chunk_numel or len(self._ranges(t)) == 1)))
            for t in sorted(base.tensors.values(), key=lambda t: (t.file, t.start))
        ]
        self.spectral_spec = self.method.spectral(self.params)
        if self.spectral_spec:
            self.plan = [replace(p, whole=False, spectral=True)
                         if p.merged and self.spectral_spec.applies(p.info.name, tuple(p.info.shape)) else p
                         for p in self.plan]
        self.thresholds: dict[str, torch.Tensor] = {}
        spec = self.method.stats(self.params)
        if spec and (stats is None or len(stats) != len(experts)):
            raise HfMergeError(f"method {self.method.name} needs {spec.kind} statistics for every expert")
        self.rowwise_stats = bool(spec and spec.elementwise)
        self._whole_stats: list[torch.Tensor | None] | None = None  # per-tensor statistics (RegMean Grams)
        self._memo: dict = {}  # the current tensor's scratch (Chunk.memo)
        self.spectral: dict[str, list[str]] = {}  # rule -> tensors it changed (memo "spectral_rule")

    # ---- reading ------------------------------------------------------------------------------------------
    def _ranges(self, info: TensorInfo, whole: bool = False) -> list[tuple[int, int]]:
        if whole:
            return [(0, info.rows)]
        step = max(1, self.chunk_numel // max(1, info.row_numel))
        return [(r, min(step, info.rows - r)) for r in range(0, info.rows, step)]

    def _read(self, name: str, first: int, rows: int) -> tuple[torch.Tensor, list[torch.Tensor | None] | None]:
        """Rows of every model stacked in fp32 ([N + 1, rows, ...], the base first) and their row statistics."""
        raw = [c.read(name, first, rows) for c in (self.base, *self.experts)]
        fp32 = torch.empty((len(raw), *raw[0].shape), dtype=torch.float32, device=self.device)
        for dst, src in zip(fp32, raw, strict=True):
            dst.copy_(src)  # dtype conversion and stacking in one pass
        if not self.rowwise_stats:
            return fp32, None
        return fp32, [s.read(name, first, rows).to(self.device, torch.float32) if name in s.tensors else None
                      for s in self.stats]

    def _read_job(self, p: PlannedTensor, first: int, rows: int):
        """One step of the stream, run in the reader thread: the rows of every model (and their statistics)
        for a merged tensor; raw base bytes, or rows converted to the output dtype, for a copied one."""
        if p.spectral:
            return None  # read by _merge_spectral, its own way
        if p.merged:
            return self._read(p.info.name, first, rows)
        if p.out_dtype == p.info.dtype:
            return self.base.read_bytes(p.info, first, rows)
        return self.base.read(p.info.name, first, rows).to(DTYPES[p.out_dtype])

    def _prefetch(self, jobs: list[tuple[PlannedTensor, int, int]]) -> Iterator[tuple[PlannedTensor, int, object]]:
        """``(p, first, data)`` for every job, each read one job ahead in a background thread (across tensors,
        so reading never waits for a tensor boundary)."""
        with ThreadPoolExecutor(1, "hfmerge-reader", torch.set_num_threads, (1,)) as pool:  # the reader uses one core
            pending = pool.submit(self._read_job, *jobs[0]) if jobs else None
            for i, (p, first, _rows) in enumerate(jobs):
                data = pending.result()
                if i + 1 < len(jobs):
                    pending = pool.submit(self._read_job, *jobs[i + 1])
                yield p, first, data

    def params_for(self, name: str) -> dict:
        """The method's parameters for one tensor: the per-tensor ones of a mergekit config (gradients, filters;
        per-expert values as tuples), else the global ones."""
        return self.tensor_params.table[name].params if self.tensor_params else self.params

    def _weights_for(self, name: str) -> list[float]:
        return self.tensor_params.table[name].weights if self.tensor_params else self.weights

    def _local_for(self, name: str) -> list[Quantile]:
        if not self.tensor_params:
            return self.local
        return [q for q in self.method.quantiles(self.params_for(name)) if q.scope == "tensor"]

    def _chunk(self, info: TensorInfo, first: int, data) -> Chunk:
        """The chunk of rows read by :meth:`_read` (``memo`` is renewed at each tensor's first row)."""
        fp32, stats = data
        if first == 0:
            self._memo = {}
        if not self.rowwise_stats:
            stats = self._whole_stats
        return Chunk(info.name, first * info.row_numel, fp32[0], fp32[1:], self._weights_for(info.name),
                     self.config.seed, self.thresholds, stats, self._memo)

    def _chunks(self, infos: list[TensorInfo]) -> Iterator[Chunk]:
        """Chunks of the given tensors in order, read ahead."""
        jobs = [(PlannedTensor(info, True, info.dtype), first, rows) for info in infos
                for first, rows in self._ranges(info)]
        for p, first, data in self._prefetch(jobs):
            yield self._chunk(p.info, first, data)

    def _plan_reads(self, items: list[tuple[PlannedTensor, bool]]) -> None:
        """Tell the sources that read ahead (Hub repos) what the next pass reads, in order: ``(tensor, spill)``;
        ``spill`` marks tensors read more than once (kept in a local spill, not fetched again)."""
        for c in (self.base, *self.experts, *(self.stats or [])):
            if callable(getattr(c, "plan", None)):
                c.plan([(rank, p.info.name, spill) for rank, (p, spill) in enumerate(items)
                        if p.merged or c is self.base])

    # ---- selection passes -----------------------------------------------------------------------------------
    def _guess(self, infos: list[TensorInfo], quantiles: list[Quantile]) -> dict[str, list[int]]:
        """Per quantile and task, the radix bucket of the threshold estimated from a few rows of every tensor."""
        samples: list[torch.Tensor] = []
        for info in infos:
            for row in sorted({int(r) for r in torch.linspace(0, info.rows - 1, 4)}):
                stack, _ = self._read(info.name, row, 1)
                samples.append((stack[1:] - stack[0]).abs().reshape(len(self.experts), -1))
        mags = torch.cat(samples, dim=1) * torch.tensor(self.weights).abs().view(-1, 1)
        return {q.key: [high_bits(kth_smallest(m, rank_for_density(m.numel(), density_of(q, i))))
                        for i, m in enumerate(mags)] for q in quantiles}

    def _select(self, infos: list[TensorInfo], quantiles: list[Quantile], label: str) -> None:
        """Exact per-task thresholds of |τᵢ| over ``infos`` for each quantile, into self.thresholds."""
        guesses = self._guess(infos, quantiles)
        selectors = {q.key: [RadixSelect(g) for g in guesses[q.key]] for q in quantiles}
        total = sum(len(self._ranges(i)) for i in infos)
        for pass_no in (1, 2):
            bar = tqdm(total=total, desc=f"{label} pass {pass_no}", unit="chunk", disable=not self.progress,
                       leave=False)
            for chunk in self._chunks(infos):
                mags = chunk.task_vectors().abs_()
                for q in quantiles:
                    for i, sel in enumerate(selectors[q.key]):
                        (sel.feed_high if pass_no == 1 else sel.feed_low)(mags[i])
                bar.update()
            bar.close()
            if pass_no == 1:
                again = [sel.choose_bucket(rank_for_density(sel.n, density_of(q, i)))
                         for q in quantiles for i, sel in enumerate(selectors[q.key])]
                if not any(again):
                    break
        for q in quantiles:
            self.thresholds[q.key] = torch.tensor([sel.value() for sel in selectors[q.key]])

    # ---- merging ----------------------------------------------------------------------------------------------
    def _begin_tensor(self, p: PlannedTensor) -> None:
        """Per-tensor preparation of a merged tensor: its streaming top-k thresholds, its whole statistics."""
        if self.local and not p.whole:
            self._select([p.info], self._local_for(p.info.name), f"top-k {p.info.name}")
        if self.stats and not self.rowwise_stats:
            self._whole_stats = [s.read(p.info.name).to(self.device, torch.float32) if p.info.name in s.tensors
                                 else None for s in self.stats]

    def _merge_chunk(self, p: PlannedTensor, chunk: Chunk, write) -> None:
        pieces = [chunk]
        if p.whole:  # exact thresholds from the whole tensor in memory, then merged by chunks
            for q in self._local_for(p.info.name):  # τ only when thresholds need it (slerp needs the raw θᵢ)
                self.thresholds[q.key] = torch.tensor([kth_smallest(t.abs(), rank_for_density(t.numel(), density_of(
                    q, i))) for i, t in enumerate(chunk.task_vectors())])
            if not self.whole_method and len(ranges := self._ranges(p.info)) > 1:
                pieces = [chunk.rows(first, rows) for first, rows in ranges]
        dtype = DTYPES[p.out_dtype]
        for piece in pieces:
            write(self.method.merge(piece, self.params_for(p.info.name)).to(dtype).cpu())
        if (rule := chunk.memo.pop("spectral_rule", None)) is not None:
            self.spectral.setdefault(rule, []).append(p.info.name)

    def _merge_spectral(self, p: PlannedTensor, write) -> None:
        """A matrix of the method's :class:`Spectral` rule, in memory independent of N: D gathered from row
        chunks of every model (or one expert's whole τᵢ at a time), then θ = θ₀ + finish(…), written whole."""
        spec, name = self.spectral_spec, p.info.name
        if spec.rows is not None:
            base = torch.empty(tuple(p.info.shape), dtype=torch.float32, device=self.device)
            acc = torch.empty_like(base)
            for first, rows in self._ranges(p.info):
                chunk = self._chunk(p.info, first, self._read(name, first, rows))
                base[first:first + rows] = chunk.base
                acc[first:first + rows] = spec.rows(chunk, self.params)
                del chunk
        else:
            base = self.base.read(name).to(self.device, torch.float32)
            acc = []
            for i, expert in enumerate(self.experts):
                tau = expert.read(name).to(self.device, torch.float32).sub_(base)
                if self.weights[i] != 1.0:
                    tau *= self.weights[i]
                acc.append(spec.expert(name, tau, i, len(self.experts), self.params))
                del tau
        delta = spec.finish(acc, self.params)
        del acc
        write(delta.add_(base).to(DTYPES[p.out_dtype]).cpu())
        self.spectral.setdefault(spec.rule, []).append(name)

    def out_tensors(self) -> list[OutTensor]:
        return [OutTensor(p.info.name, p.out_dtype, p.info.shape) for p in self.plan]

    def run(self, writer: ShardWriter | MemoryWriter) -> dict:
        """Stream every planned tensor into ``writer`` (built from :meth:`out_tensors`)."""
        t0 = time.perf_counter()
        reuse_freed_memory()
        global_q = [q for q in self.quantiles if q.scope == "global"]
        merged = [p.info for p in self.plan if p.merged]
        if global_q and merged:
            self._plan_reads([(p, True) for p in self.plan if p.merged])  # read by every pass: fetched once
            self._select(merged, global_q, "global top-k")
        self._plan_reads([(p, p.merged and bool(global_q or self.local and not p.whole)) for p in self.plan])
        total = sum(t.nbytes for t in self.out_tensors())
        bar = tqdm(total=total, desc=f"merge ({self.method.name})", unit="B", unit_scale=True,
                   disable=not self.progress)

        def write(data: torch.Tensor | bytes | bytearray) -> None:
            writer.write(data)
            bar.update(data.numel() * data.element_size() if isinstance(data, torch.Tensor) else len(data))

        jobs = [(p, first, rows) for p in self.plan
                for first, rows in ([(0, 0)] if p.spectral else self._ranges(p.info, p.whole))]
        try:
            for p, first, data in self._prefetch(jobs):
                if first == 0:
                    writer.begin(p.info.name)
                    if p.merged:
                        self._begin_tensor(p)
                if p.spectral:
                    self._merge_spectral(p, write)
                elif p.merged:
                    self._merge_chunk(p, self._chunk(p.info, first, data), write)
                else:
                    write(data)
            files = writer.finish()
        finally:
            writer.abort()
            bar.close()
        return {
            "shards": files,
            "tensors_merged": len(merged),
            "tensors_copied": len(self.plan) - len(merged),
            **({"spectral_rules": self.spectral} if self.spectral else {}),
            "bytes_written": writer.bytes_written,
            "merge_seconds": round(time.perf_counter() - t0, 3),
        }


_JOB_NAMES = ("merge", "merge_state_dict", "open_merger", "resolve_stats", "resolved_config")


def __getattr__(name: str):
    """The job-level API (merge, merge_state_dict, ...) lives in hfmerge.job; re-exported here for callers."""
    if name in _JOB_NAMES:
        from hfmerge import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
