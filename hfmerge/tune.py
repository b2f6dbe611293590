"""Hyper-parameter search on surrogate validation tasks (never the test tasks), as MergeBench does.

Candidates are merged in memory and scored by a ``Scorer`` (state dict -> higher-is-better number; the CLI's
scorer evaluates the validation suite with lighteval). For methods linear in their scaling λ
(task arithmetic, TIES, DARE, consensus) θ(λ) = θ₀ + λ·Δ: Δ is merged once per setting of the other
parameters and reused for every λ, so a 10-point λ grid costs one merge, not ten.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from hfmerge.config import MergeConfig
from hfmerge.engine import is_skipped, resolve_dtype
from hfmerge.errors import HfMergeError
from hfmerge.files import write_atomic
from hfmerge.job import merge_state_dict
from hfmerge.methods.registry import get_method
from hfmerge.sources import FLOAT_DTYPES, open_checkpoint

Scorer = Callable[[dict[str, torch.Tensor]], float]
LINEAR_IN_SCALING = {"task_arithmetic", "ties", "dare", "consensus"}
_SCALINGS = [round(0.1 * i, 1) for i in range(1, 11)]
# MergeBench's grid sizes: TA 10, TIES 30, DARE 30, Consensus 35, dataless L&S 5, RegMean 5.
DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "task_arithmetic": {"scaling": _SCALINGS},
    "ties": {"density": [0.1, 0.2, 0.3], "scaling": _SCALINGS},
    "dare": {"drop_rate": [0.7, 0.8, 0.9], "scaling": _SCALINGS},
    "consensus": {"k": [1, 2, 3, 4, 5], "mask_lambda": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]},
    "localize_stitch": {"sparsity": [0.1, 0.2, 0.3, 0.4, 0.5]},
    "regmean": {"reduction": [0.1, 0.3, 0.5, 0.7, 0.9]},
}


def parse_grid(text: str) -> dict[str, list]:
    """``"scaling=0.2:1.0:0.2,density=0.1,0.2,0.3,aggregate=sum,mean"`` -> {name: [values]};
    ``a:b:step`` is an inclusive range."""
    grid: dict[str, list] = {}
    key = None
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if "=" in token:
            key, _, token = token.partition("=")
            key = key.strip()
            grid[key] = []
        if key is None:
            raise HfMergeError(f"--grid {text!r}: start with name=values, e.g. scaling=0.2:1.0:0.2")
        if token.count(":") == 2:
            try:
                lo, hi, step = (float(x) for x in token.split(":"))
            except ValueError:
                raise HfMergeError(f"--grid: bad range {token!r} (use start:stop:step)") from None
            if step <= 0 or hi < lo:
                raise HfMergeError(f"--grid: bad range {token!r} (step > 0 and start ≤ stop)")
            n = int(round((hi - lo) / step)) + 1
            grid[key] += [round(lo + i * step, 10) for i in range(n) if lo + i * step <= hi + 1e-9]
        else:
            grid[key].append(yaml.safe_load(token))
    return grid


@dataclass
class TuneResult:
    method: str
    rows: list[dict] = field(default_factory=list)  # {"parameters", "score", "seconds"}
    merges: int = 0
    seconds: float = 0.0

    @property
    def best(self) -> dict:
        return max(self.rows, key=lambda r: r["score"])

    def table(self) -> str:
        keys = list(self.rows[0]["parameters"]) if self.rows else []
        lines = [" ".join(f"{k:>12s}" for k in [*keys, "score"])]
        for r in sorted(self.rows, key=lambda r: -r["score"]):
            lines.append(" ".join(f"{r['parameters'][k]!s:>12s}" for k in keys) + f" {r['score']:12.4f}")
        return "\n".join(lines)


def _candidates(method: str, base_params: dict, grid: dict[str, list]) -> list[dict]:
    spec = get_method(method)
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(base_params, **dict(zip(keys, values, strict=True)))
        spec.resolve(params)  # refuse out-of-range grid points before any work
        out.append(params)
    return out


def tune(config: MergeConfig, grid: dict[str, list] | None, scorer: Scorer, *, progress: bool = True) -> TuneResult:
    """Score every grid point; returns all rows (the best one first when sorted) and the validation cost."""
    grid = grid or DEFAULT_GRIDS.get(config.method)
    if not grid:
        raise HfMergeError(f"method {config.method} has no default grid: pass --grid name=values")
    candidates = _candidates(config.method, config.parameters, grid)
    result = TuneResult(config.method)
    t0 = time.perf_counter()
    reuse = config.method in LINEAR_IN_SCALING
    base, full = _base_tensors(config) if reuse else ({}, {})
    deltas: dict[str, dict[str, torch.Tensor]] = {}
    for params in tqdm(candidates, desc=f"tune {config.method}", disable=not progress):
        start = time.perf_counter()
        if reuse:
            key = json.dumps({k: v for k, v in params.items() if k != "scaling"}, sort_keys=True)
            if key not in deltas:
                unit = merge_state_dict(replace(config, parameters=dict(params, scaling=1.0), dtype="float32"))
                deltas[key] = {n: unit[n] - base[n] for n in base}
                result.merges += 1
            lam = params.get("scaling", 1.0)
            state = {n: (base[n] + lam * deltas[key][n]).to(t.dtype) if n in base else t for n, t in full.items()}
        else:
            state = merge_state_dict(replace(config, parameters=params))
            result.merges += 1
        result.rows.append({"parameters": params, "score": float(scorer(state)),
                            "seconds": round(time.perf_counter() - start, 3)})
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _base_tensors(config: MergeConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(fp32 base tensors the method merges, every base tensor as a merge outputs it)."""
    base = open_checkpoint(config.base_model)
    try:
        dtype = getattr(torch, resolve_dtype(config, base))
        full, merged = {}, {}
        for n, t in base.tensors.items():
            x = base.read(n)
            if t.dtype in FLOAT_DTYPES:
                if not is_skipped(n, config.skip):
                    merged[n] = x.float()
                x = x.to(dtype)
            full[n] = x
        return merged, full
    finally:
        base.close()


def suite_scorer(config: MergeConfig, tasks: str, out: Path, *, custom_tasks=None, limit: int | None = None,
                 batch_size: int = 8, metric: dict | None = None, data_dir=None, **eval_options) -> Scorer:
    """Score = mean over the validation tasks of each task's metric that counts, evaluated by lighteval on
    the candidate in memory."""
    from hfmerge.eval.runner import InMemory, build_model, evaluate
    from hfmerge.eval.scores import task_score

    counter = iter(range(1 << 30))

    def score(state: dict[str, torch.Tensor]) -> float:
        i = next(counter)
        model = build_model(config.base_model, state)
        res = evaluate(InMemory(model, config.base_model, f"candidate-{i}"), tasks, out / f"candidate-{i}",
                       custom_tasks=custom_tasks, limit=limit, batch_size=batch_size, data_dir=data_dir,
                       **eval_options)  # allow_code_execution, safety_judge, judge_model
        values = [task_score(res, key.split("|")[0], metric) for key in res["tasks"]]
        values = [v for v in values if v is not None]
        if not values:
            raise HfMergeError(f"the validation tasks {tasks!r} produced no scores")
        return sum(values) / len(values)

    return score


def write_results(result: TuneResult, config: MergeConfig, out: Path) -> Path:
    """tune.json (every candidate, cost) and best.yaml (the config to merge with)."""
    out.mkdir(parents=True, exist_ok=True)
    best = replace(config, parameters=result.best["parameters"])
    write_atomic(out / "best.yaml", yaml.safe_dump(best.to_dict(), sort_keys=False))
    write_atomic(out / "tune.json", json.dumps({
        "method": result.method, "best": result.best, "evaluations": len(result.rows), "merges": result.merges,
        "seconds": result.seconds, "rows": result.rows}, indent=2) + "\n")
    return out / "best.yaml"
