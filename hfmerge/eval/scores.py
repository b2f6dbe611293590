"""MergeBench's measures from results.json files (``hfmerge eval``) of the base, the experts and the merges.

- normalized performance of a merge on domain d = merge's score on d / the d-expert's score on d (MergeBench);
  its mean over domains is the headline number;
- forgetting = mean over the forgetting tasks of merge / base (1.0 = nothing lost; MergeBench);
- beats base: the merge's mean domain score exceeds the base's; gain over the best expert: the merge's mean
  domain score minus the best single expert's (both from "A Systematic Study of Model Merging Techniques
  in LLMs", 2025).
A domain's score is the mean over its tasks of each task's metric that counts, taken as 1 − value for tasks
whose metric is lower-is-better (the safety domain: mean of 1 − WildGuardTest harm rate, 1 − HarmBench ASR,
1 − DAN ASR and XSTest accuracy; our rule, MergeBench published none).
"""

from __future__ import annotations

import json
from pathlib import Path

from hfmerge.errors import HfMergeError


def load_results(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise HfMergeError(f"cannot read results {path}: {e}") from None
    if not isinstance(data, dict) or "tasks" not in data:
        raise HfMergeError(f"{path} is not a results.json of `hfmerge eval` (no 'tasks')")
    return data


def task_score(results: dict, task: str, metric: dict | None = None) -> float | None:
    """The metric that counts for ``task`` (name without shots) in a results dict, or None if absent. ``metric``
    maps a task to its metric's name or to candidate names (the first present counts)."""
    for key, metrics in results["tasks"].items():
        if key.split("|")[0] != task:
            continue
        wanted = (metric or {}).get(task)
        for name in (wanted,) if isinstance(wanted, str) else (wanted or ()):
            if name in metrics:
                return float(metrics[name])
        if wanted:
            return None  # the metric that counts is absent: never another one in its place
        names = [m for m in sorted(metrics) if not m.endswith("_stderr")]
        return float(metrics[names[0]]) if names else None
    return None


def counted_metric(results: dict, task: str, metric: dict | None = None) -> str | None:
    """The name of the metric ``task_score`` takes for ``task``."""
    for key, metrics in results["tasks"].items():
        if key.split("|")[0] == task:
            wanted = (metric or {}).get(task)
            names = (wanted,) if isinstance(wanted, str) else tuple(wanted or ())
            return next((n for n in names if n in metrics),
                        None if names else next((m for m in sorted(metrics) if not m.endswith("_stderr")), None))
    return None


def domain_scores(results: dict, domains: dict[str, list[str]], metric: dict | None = None,
                  lower_is_better: tuple[str, ...] | set[str] = ()) -> dict:
    out = {}
    for domain, tasks in domains.items():
        values = [1.0 - v if t in lower_is_better else v
                  for t in tasks if (v := task_score(results, t, metric)) is not None]
        if values:
            out[domain] = sum(values) / len(values)
    return out


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def measures(merge: dict, base: dict, experts: dict[str, dict], domains: dict[str, list[str]],
             forgetting_tasks: list[str] | None = None, metric: dict | None = None,
             lower_is_better: tuple[str, ...] | set[str] = ()) -> dict:
    """The four measures for one merge (each None when its inputs are missing)."""
    low = lower_is_better
    merged = domain_scores(merge, domains, metric, low)
    base_scores = domain_scores(base, domains, metric, low)
    normalized = {}
    for domain, expert in experts.items():
        own = domain_scores(expert, {domain: domains.get(domain, [])}, metric, low).get(domain)
        if own and domain in merged:
            normalized[domain] = merged[domain] / own
    if normalized:
        normalized["mean"] = _mean(normalized.values())
    ratios = []
    for task in forgetting_tasks or []:
        m, b = task_score(merge, task, metric), task_score(base, task, metric)
        if m is not None and b:
            ratios.append(m / b)
    expert_means = [_mean(domain_scores(e, domains, metric, low).values()) for e in experts.values()]
    merged_mean, base_mean = _mean(merged.values()), _mean(base_scores.values())
    best_expert = max((m for m in expert_means if m is not None), default=None)
    return {
        "model": merge.get("model"),
        "domains": merged,
        "normalized": normalized or None,
        "forgetting": _mean(ratios),
        "beats_base": None if merged_mean is None or base_mean is None else merged_mean > base_mean,
        "gain_over_best_expert": None if merged_mean is None or best_expert is None else merged_mean - best_expert,
        "proxies": sorted({d for d, tasks in domains.items() for t in tasks
                           if (counted_metric(merge, t, metric) or "").endswith("_proxy")}) or None,
        "tasks": merge["tasks"],
    }


def table(rows: dict[str, dict]) -> str:
    """A plain-text leaderboard of measures (one row per merge)."""
    def fmt(v):
        return "-" if v is None else ("yes" if v is True else "no" if v is False else f"{v:.3f}")

    head = f"{'merge':28s} {'norm. perf':>10s} {'forgetting':>10s} {'beats base':>10s} {'gain/best':>10s}"
    lines = [head, "-" * len(head)]
    for name, m in sorted(rows.items(), key=lambda kv: -((kv[1].get("normalized") or {}).get("mean") or 0)):
        lines.append(f"{name:28s} {fmt((m.get('normalized') or {}).get('mean')):>10s} {fmt(m['forgetting']):>10s} "
                     f"{fmt(m['beats_base']):>10s} {fmt(m['gain_over_best_expert']):>10s}")
    return "\n".join(lines)
