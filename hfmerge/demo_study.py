"""The systematic study's protocol on the mini-MergeBench ("A Systematic Study of Model Merging Techniques in
LLMs", 2025): ``hfmerge study`` (hfmerge.eval.study.run_study) over subsets of the five experts, task arithmetic
as a sum (λ = 1) and as a mean (λ = 1/n). A model's score is its mean exact match over the five domains' test
splits (the first ``limit`` rows of each, to keep the demo short); the study's plot and study.json are copied
to ``results/study``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hfmerge.demo_data import DOMAINS

METHODS = "task_arithmetic"


def run_demo_study(config, out: Path, results_dir: Path, tasks_file: str, *, sizes=(2, 3, 4, 5), repeats: int = 10,
                   limit: int | None = None, log=print) -> dict:
    """Run the study of ``config``'s experts; returns a summary for the leaderboard (per variant: the share of
    subsets beating the base, over every subset and per size, and the mean gains)."""
    from hfmerge.eval.study import run_study
    from hfmerge.eval.suites import Suite

    suite = Suite("mini", "the mini-MergeBench's five domains (test splits)",
                  [f"mini_{d}_test|0" for d in DOMAINS], domains={d: [f"mini_{d}_test"] for d in DOMAINS},
                  custom_tasks=tasks_file)
    study = run_study(config, METHODS, list(sizes), repeats, suite, out, limit=limit, batch_size=32,
                      progress=False, log=log)
    dest = results_dir / "study"
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("study.json", "study.png"):
        shutil.copy(out / f, dest / f)
    return summarize(study)


def summarize(study: dict) -> dict:
    """Per variant: share of all subsets beating the base, per size n the study's own measures."""
    variants = {}
    for label, per_size in study["results"].items():
        rows = [r for m in per_size.values() for r in m["rows"]]
        variants[label] = {
            "beats_base_share": sum(r["beats_base"] for r in rows) / len(rows) if rows else None,
            "subsets": len(rows),
            "per_size": {n: {k: m[k] for k in ("subsets", "beats_base_share", "mean_gain_over_base_points",
                                               "mean_gain_over_best_single_points")} for n, m in per_size.items()},
        }
    lines = [f"study over subsets of the experts (hfmerge study; base score {study['scores'].get('base', 0):.3f}, "
             "mean exact match over the five domains):"]
    for label, v in variants.items():
        lines.append(f"  {label}: beats the base on {v['beats_base_share']:.0%} of {v['subsets']} subsets")
        for n, m in v["per_size"].items():
            lines.append(f"    n={n}: {m['beats_base_share']:.0%} of {m['subsets']}, gain over base "
                         f"{m['mean_gain_over_base_points']:+.1f} points, over the best single expert "
                         f"{m['mean_gain_over_best_single_points']:+.1f}")
    sum_label = next((label for label in variants if "(sum)" in label), None)
    return {"variants": variants, "base_score": study["scores"].get("base"),
            "ta_label": sum_label,
            "ta_beats_base_share": variants[sum_label]["beats_base_share"] if sum_label else None,
            "text": "\n".join(lines)}
