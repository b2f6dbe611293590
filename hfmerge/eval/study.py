"""The protocol of "A Systematic Study of Model Merging Techniques in Large Language Models" (Hitit, Girrbach,
Akata 2025): merge random subsets of a pool of experts with each method and count how often the merge beats
the base.

For every subset size n, ``repeats`` subsets of the config's experts are drawn with a seeded generator (every
combination when there are no more than ``repeats``; the full set once when n = N); every method merges the SAME
subsets, in memory, and each merge is evaluated on a suite; the base and every single expert are evaluated too.
A model's score is the mean over the suite's tasks of the metric that counts (a fraction; points = 100 × score).

Per method and n, ``study.json`` holds the share of subsets whose score beats the base's, the mean gain over the
base (points; losers included, as in the study) and over the subset's best single expert (the highest-scoring
expert of that subset, evaluated alone), and every subset's scores; ``study.png`` plots both against n.
The study's own "Task Arithmetic" most likely averaged the task vectors: ``task_arithmetic`` is run both as
λ = 1 (sum) and λ = 1/n (mean), labelled. Every score is saved as soon as it exists: an interrupted study resumes
where it stopped (same protocol; methods may be added).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from hfmerge.config import MergeConfig
from hfmerge.errors import HfMergeError
from hfmerge.eval.suites import Suite, get_suite
from hfmerge.files import write_atomic
from hfmerge.methods.registry import get_method

STUDY_FILE = "study.json"
PLOT_FILE = "study.png"


@dataclass(frozen=True)
class Variant:
    """One merge recipe of the study: a method, its parameters, and whether λ is 1/n (the mean of τᵢ)."""

    label: str
    method: str
    parameters: dict
    mean_scaling: bool = False

    def params_for(self, n: int) -> dict:
        return dict(self.parameters, scaling=1.0 / n) if self.mean_scaling else dict(self.parameters)


def parse_methods(spec: str | list[str], defaults: MergeConfig | None = None) -> list[Variant]:
    """``"task_arithmetic,ties:density=0.1:aggregate=mean,tsv_m"`` -> variants. ``task_arithmetic`` without an
    explicit ``scaling`` gives two: λ = 1 (sum) and λ = 1/n (mean). Parameters of the config's own method are the
    defaults for that method."""
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t.strip()]
    if not tokens:
        raise HfMergeError("--methods is empty: give e.g. task_arithmetic,ties,tsv_m,iso_c")
    out: list[Variant] = []
    for token in tokens:
        name, *pairs = token.split(":")
        method = get_method(name)
        params = dict(defaults.parameters) if defaults and defaults.method == name else {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise HfMergeError(f"--methods {token!r}: parameters look like method:name=value[:name=value]")
            params[key.strip()] = yaml.safe_load(value)
        method.resolve(params)  # refuse unknown or out-of-range parameters before any work
        if name == "task_arithmetic" and "scaling" not in params:
            out.append(Variant(f"{token} λ=1 (sum)", name, params))
            out.append(Variant(f"{token} λ=1/n (mean)", name, params, mean_scaling=True))
        else:
            out.append(Variant(token, name, params))
    labels = [v.label for v in out]
    if len(set(labels)) != len(labels):
        raise HfMergeError(f"--methods lists {next(x for x in labels if labels.count(x) > 1)!r} twice")
    return out


def draw_subsets(n_experts: int, sizes: list[int], repeats: int, seed: int) -> dict[int, list[list[int]]]:
    """Per size n: ``repeats`` distinct subsets (sorted expert indices) drawn by a generator seeded with
    (seed, n); every combination when C(N, n) ≤ repeats (so the full set once for n = N)."""
    if repeats < 1:
        raise HfMergeError(f"--repeats must be ≥ 1 (got {repeats})")
    out = {}
    for n in sizes:
        if not 2 <= n <= n_experts:
            raise HfMergeError(f"subset size {n} is out of range: sizes lie in 2..{n_experts} (the config has "
                               f"{n_experts} experts; single experts are always evaluated)")
        if math.comb(n_experts, n) <= repeats:
            out[n] = [list(c) for c in itertools.combinations(range(n_experts), n)]
            continue
        rng = random.Random(f"hfmerge-study|{seed}|{n}")
        chosen: set[tuple[int, ...]] = set()
        picks = []
        while len(picks) < repeats:
            subset = tuple(sorted(rng.sample(range(n_experts), n)))
            if subset not in chosen:
                chosen.add(subset)
                picks.append(list(subset))
        out[n] = picks
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(study: dict) -> dict:
    """Per variant and size: the study's measures from the recorded scores (subsets not yet scored are left out)."""
    scores = study["scores"]
    base = scores.get("base")
    singles = [scores.get(f"expert/{i}") for i in range(len(study["protocol"]["experts"]))]
    results: dict[str, dict] = {}
    for variant in study["methods"]:
        label = variant["label"]
        per_size = {}
        for n, subsets in study["protocol"]["subsets"].items():
            rows = []
            for subset in subsets:
                score = scores.get(_key(label, subset))
                best = max((singles[i] for i in subset if singles[i] is not None), default=None)
                if score is None or base is None or best is None or any(singles[i] is None for i in subset):
                    continue
                rows.append({"experts": subset, "score": score, "best_single": best,
                             "gain_over_base": 100 * (score - base), "gain_over_best_single": 100 * (score - best),
                             "beats_base": score > base})
            per_size[str(n)] = {
                "subsets": len(rows), "of": len(subsets),
                "beats_base_share": _mean([float(r["beats_base"]) for r in rows]),
                "mean_gain_over_base_points": _mean([r["gain_over_base"] for r in rows]),
                "mean_gain_over_best_single_points": _mean([r["gain_over_best_single"] for r in rows]),
                "rows": rows,
            }
        results[label] = per_size
    return results


def _key(label: str, subset: list[int]) -> str:
    return f"{label}/{'-'.join(map(str, subset))}"


def plot(study: dict, path: Path) -> Path:
    """study.png: share of subsets beating the base, and mean gains (over the base: solid; over the subset's
    best single expert: dashed), against subset size, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (share_ax, gain_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, per_size) in enumerate(study["results"].items()):
        sizes = sorted(int(n) for n, m in per_size.items() if m["subsets"])
        if not sizes:
            continue
        color = f"C{i % 10}"
        share_ax.plot(sizes, [100 * per_size[str(n)]["beats_base_share"] for n in sizes], "o-", color=color,
                      label=label)
        gain_ax.plot(sizes, [per_size[str(n)]["mean_gain_over_base_points"] for n in sizes], "o-", color=color,
                     label=f"{label} vs base")
        gain_ax.plot(sizes, [per_size[str(n)]["mean_gain_over_best_single_points"] for n in sizes], "s--",
                     color=color, alpha=0.7, label=f"{label} vs best single")
    ticks = sorted({int(n) for per_size in study["results"].values() for n in per_size})
    for ax in (share_ax, gain_ax):
        ax.set_xticks(ticks)
    share_ax.set(xlabel="experts merged (n)", ylabel="subsets beating the base (%)", ylim=(-5, 105),
                 title="beats base")
    gain_ax.axhline(0, color="grey", lw=0.8)
    gain_ax.set(xlabel="experts merged (n)", ylabel="mean gain (points)",
                title="gain over base (solid), over best single expert (dashed)")
    share_ax.legend(fontsize=7)
    gain_ax.legend(fontsize=6)
    fig.suptitle(f"{study['protocol']['base']}: {study['protocol']['suite']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _protocol(config: MergeConfig, suite: Suite, subsets: dict, repeats: int, seed: int, limit: int | None) -> dict:
    return {"base": config.base_model, "experts": [m.source for m in config.models],
            "weights": [m.weight for m in config.models], "skip": config.skip, "dtype": config.dtype,
            "suite": suite.name, "tasks": suite.tasks, "limit": limit, "repeats": repeats, "seed": seed,
            "subsets": {str(n): s for n, s in subsets.items()}}


def _resolve_suite(suite: str | Suite | None, tasks: str | None, custom_tasks) -> Suite:
    if isinstance(suite, Suite):
        return suite
    if bool(suite) == bool(tasks):
        raise HfMergeError("give exactly one of a suite (--suite) or tasks (--tasks)")
    if suite:
        s = get_suite(suite)
        return replace(s, custom_tasks=str(custom_tasks) if custom_tasks else s.custom_tasks)
    return Suite("tasks", "tasks given on the command line", [t.strip() for t in tasks.split(",") if t.strip()],
                 custom_tasks=str(custom_tasks) if custom_tasks else None)


def run_study(config: MergeConfig, methods: str | list[str], sizes: list[int], repeats: int,
              suite: str | Suite | None, out: str | Path, *, tasks: str | None = None, custom_tasks=None,
              limit: int | None = None, batch_size: int = 8, data_dir=None, seed: int = 0, device: str = "cpu",
              progress: bool = True, log=print) -> dict:
    """Run (or resume) the study of ``config``'s experts into ``out``; returns the study (as in study.json).

    ``methods`` as for :func:`parse_methods`; ``suite`` a suite name or :class:`Suite` (or None with ``tasks``,
    lighteval specs). ``config`` gives the base, the expert pool (its ``models``), skip, dtype and the defaults of
    its own method's parameters."""
    from hfmerge.eval.runner import InMemory, build_model, evaluate
    from hfmerge.eval.scores import task_score
    from hfmerge.job import merge_state_dict

    s = _resolve_suite(suite, tasks, custom_tasks)
    variants = parse_methods(methods, config)
    for v in variants:
        need = get_method(v.method).min_experts
        if need > min(sizes):
            raise HfMergeError(f"method {v.method} needs at least {need} experts: drop subset size {min(sizes)}")
    sizes = sorted(set(sizes))
    subsets = draw_subsets(len(config.models), sizes, repeats, seed)
    protocol = _protocol(config, s, subsets, repeats, seed, limit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / STUDY_FILE
    study = {"protocol": protocol, "methods": [], "scores": {}, "seconds": {}}
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in protocol if old.get("protocol", {}).get(k) != protocol[k]]
        if diff:
            raise HfMergeError(f"{out} holds a study with another protocol ({diff[0]} differs): resume with the same "
                               "config, sizes, repeats, seed and suite, or choose another -o")
        study = old
    known = {v["label"]: v for v in study["methods"]}
    for v in variants:
        if v.label in known and (known[v.label]["method"], known[v.label]["parameters"], known[v.label]["mean"]) \
                != (v.method, v.parameters, v.mean_scaling):
            raise HfMergeError(f"{out}: method label {v.label!r} was run with other parameters; choose another -o")
        default = get_method(v.method).params.get("scaling")
        known.setdefault(v.label, {"label": v.label, "method": v.method, "parameters": v.parameters,
                                   "mean": v.mean_scaling,
                                   "scaling": "1/n (mean of the task vectors)" if v.mean_scaling else
                                   v.parameters.get("scaling", default.default if default else None)})
    study["methods"] = list(known.values())

    def score_of(results: dict) -> float:
        values = [task_score(results, key.split("|")[0], s.metric) for key in results["tasks"]]
        values = [v for v in values if v is not None]
        if not values:
            raise HfMergeError(f"the suite {s.name!r} produced no scores")
        return sum(values) / len(values)

    def run_eval(key: str, model) -> None:
        t0 = time.perf_counter()
        folder = Path("evals") / _slug(key)
        res = evaluate(model, s.spec, out / folder, custom_tasks=s.custom_tasks, limit=limit,
                       batch_size=batch_size, data_dir=data_dir, multilingual=s.multilingual)
        study["scores"][key] = score_of(res)
        study.setdefault("evals", {})[key] = str(folder)
        study["seconds"][key] = round(time.perf_counter() - t0, 3)
        study["results"] = summarize(study)
        _write_json(path, study)

    jobs: list[tuple[str, object]] = [("base", None)]
    jobs += [(f"expert/{i}", i) for i in range(len(config.models))]
    jobs += [(_key(v.label, subset), (v, subset)) for v in variants for n in sizes for subset in subsets[n]]
    todo = [(k, j) for k, j in jobs if k not in study["scores"]]
    if len(todo) < len(jobs):
        log(f"resuming {out}: {len(jobs) - len(todo)} of {len(jobs)} evaluations already done")
    bar = tqdm(todo, desc="study", unit="eval", disable=not progress)
    for key, job in bar:
        bar.set_postfix_str(key[-40:])
        if key == "base":
            run_eval(key, config.base_model)
        elif isinstance(job, int):
            run_eval(key, _single_model(config, job, device))
        else:
            v, subset = job
            cfg = replace(config, method=v.method, parameters=v.params_for(len(subset)),
                          models=[config.models[i] for i in subset])
            state = merge_state_dict(cfg, device=device)
            model = InMemory(build_model(config.base_model, state), config.base_model, f"study:{key}")
            del state
            run_eval(key, model)
    bar.close()
    study["results"] = summarize(study)
    _write_json(path, study)
    plot(study, out / PLOT_FILE)
    return study


def _single_model(config: MergeConfig, i: int, device: str):
    """Expert ``i`` alone, as evaluated: its own checkpoint, or (a LoRA adapter) the base with the adapter merged."""
    from hfmerge.eval.runner import InMemory, build_model
    from hfmerge.job import merge_state_dict
    from hfmerge.lora import is_adapter
    from hfmerge.sources import open_reader

    source = config.models[i].source
    reader = open_reader(source, False)
    try:
        adapter = is_adapter(reader)
    finally:
        reader.close()
    if not adapter:
        return source
    single = replace(config, method="task_arithmetic", parameters={"scaling": 1.0},
                     models=[replace(config.models[i], weight=1.0)])
    return InMemory(build_model(config.base_model, merge_state_dict(single, device=device)), config.base_model,
                    f"study:{source}")


def table(study: dict) -> str:
    """A plain-text summary: per method and n, beats-base share and mean gains."""
    head = f"{'method':44s} {'n':>3s} {'subsets':>8s} {'beats base':>10s} {'gain/base':>10s} {'gain/best':>10s}"
    lines = [head, "-" * len(head)]

    def fmt(v, pct=False):
        return "-" if v is None else (f"{100 * v:.0f}%" if pct else f"{v:+.2f}")

    for label, per_size in study["results"].items():
        for n, m in sorted(per_size.items(), key=lambda kv: int(kv[0])):
            lines.append(f"{label[:44]:44s} {n:>3s} {m['subsets']:>4d}/{m['of']:<3d} "
                         f"{fmt(m['beats_base_share'], True):>10s} {fmt(m['mean_gain_over_base_points']):>10s} "
                         f"{fmt(m['mean_gain_over_best_single_points']):>10s}")
    base = study["scores"].get("base")
    lines.append(f"base score {base:.4f}" if base is not None else "base not evaluated")
    return "\n".join(lines)
