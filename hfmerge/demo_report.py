"""The demo's leaderboard: MergeBench's measures for the base, every expert and every merge, the issue's targets
checked against them, and the text and JSON forms written next to the results."""

from __future__ import annotations

import json
from pathlib import Path

from hfmerge.demo_data import DOMAINS
from hfmerge.eval.scores import measures, task_score

GENERAL = "mini_general_test"
TARGETS = {
    "experts_beat_base": "every expert beats the base on its own domain",
    "experts_keep_general": "every expert keeps >= 0.6 of the base's general score",
    "best_merge_normalized": "the best merge's normalized performance >= 0.6",
    "best_merge_beats_base_domains": "the best merge beats the base on >= 4 of 5 domains",
    "tuned_ta_at_least_untuned": "tuned task arithmetic >= untuned (normalized performance)",
    "merges_forget_less": "the merges' mean general score > the experts' mean general score",
    "study_ta_beats_base": "task arithmetic beats the base on >= 80% of the study's subsets",
}


def _domains() -> dict[str, list[str]]:
    return {d: [f"mini_{d}_test"] for d in DOMAINS}


def model_row(results: dict, base: dict, experts: dict[str, dict], kind: str, extra: dict | None = None) -> dict:
    """Per-domain scores, general score, normalized performance, forgetting, beats-base (mean and per domain),
    gain over the best expert."""
    m = measures(results, base, experts, _domains(), [GENERAL])
    base_scores = measures(base, base, experts, _domains(), [GENERAL])["domains"]
    above = [d for d in DOMAINS if d in m["domains"] and m["domains"][d] > base_scores.get(d, 0.0)]
    row = {"kind": kind, "domains": m["domains"], "general": task_score(results, GENERAL),
           "normalized": m["normalized"], "forgetting": m["forgetting"], "beats_base": m["beats_base"],
           "domains_above_base": above, "gain_over_best_expert": m["gain_over_best_expert"]}
    row.update(extra or {})
    return row


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _norm(row: dict) -> float | None:
    return (row.get("normalized") or {}).get("mean")


def leaderboard(evals: dict[str, dict], merges: dict[str, dict], left_out: dict[str, str], study: dict | None,
                tune: dict, info: dict) -> dict:
    """The leaderboard as a dict: models (base, experts, merges), what was left out and why, the study's
    summary and every target with its measured value."""
    base = evals["base"]
    experts = {d: evals[f"expert-{d}"] for d in DOMAINS}
    models = {"base": model_row(base, base, experts, "base")}
    for d in DOMAINS:
        models[f"expert-{d}"] = model_row(experts[d], base, experts, "expert", {"domain": d})
    for name, m in merges.items():
        res = {"model": m.get("model"), "tasks": m["tasks"]}
        models[name] = model_row(res, base, experts, "merge", {"method": m.get("method"),
                                                                "parameters": m.get("parameters")})
    merge_rows = {n: r for n, r in models.items() if r["kind"] == "merge"}
    expert_rows = {n: r for n, r in models.items() if r["kind"] == "expert"}
    best = max(merge_rows, key=lambda n: _norm(merge_rows[n]) or -1.0, default=None)
    gaps = {d: models[f"expert-{d}"]["domains"].get(d, 0.0) - models["base"]["domains"].get(d, 0.0)
            for d in DOMAINS}
    kept = {d: models[f"expert-{d}"]["forgetting"] for d in DOMAINS}
    tuned, untuned = (_norm(merge_rows[n]) if n in merge_rows else None
                      for n in ("task_arithmetic_tuned", "task_arithmetic"))
    merges_general = _mean(r["general"] for r in merge_rows.values())
    experts_general = _mean(r["general"] for r in expert_rows.values())
    study_share = (study or {}).get("ta_beats_base_share")
    values = {
        "experts_beat_base": (min(gaps.values()), min(gaps.values()) > 0),
        "experts_keep_general": (min(v or 0.0 for v in kept.values()), min(v or 0.0 for v in kept.values()) >= 0.6),
        "best_merge_normalized": (_norm(merge_rows[best]) if best else None,
                                  bool(best) and (_norm(merge_rows[best]) or 0) >= 0.6),
        "best_merge_beats_base_domains": (len(merge_rows[best]["domains_above_base"]) if best else None,
                                          bool(best) and len(merge_rows[best]["domains_above_base"]) >= 4),
        "tuned_ta_at_least_untuned": ((tuned, untuned), None not in (tuned, untuned) and tuned >= untuned),
        "merges_forget_less": ((merges_general, experts_general),
                               None not in (merges_general, experts_general) and merges_general > experts_general),
        "study_ta_beats_base": (study_share, study_share is not None and study_share >= 0.8),
    }
    targets = {k: {"target": TARGETS[k], "value": v, "met": bool(ok)} for k, (v, ok) in values.items()}
    return {"setting": {k: info.get(k) for k in ("size", "arch", "build_seconds")},
            "domains": list(DOMAINS), "best_merge": best, "models": models, "left_out": left_out,
            "tuning": {"method": tune.get("method"), "best": tune.get("best"), "rows": tune.get("rows")},
            "study": study, "targets": targets}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, (list, tuple)):
        return " / ".join(_fmt(x) for x in v)
    return str(v)


def render(board: dict) -> str:
    """The leaderboard as plain text: one row per model (domain scores are exact match on the test splits)."""
    short = {"instruction": "instr", "math": "math", "coding": "code", "multilingual": "multi", "safety": "safety"}
    head = (f"{'model':26s} " + " ".join(f"{short[d]:>6s}" for d in DOMAINS)
            + f" {'general':>7s} {'norm.':>6s} {'forget':>6s} {'>base':>5s} {'gain/best':>9s}")
    lines = [head, "-" * len(head)]
    order = sorted(board["models"].items(), key=lambda kv: (
        {"base": 0, "expert": 1, "merge": 2}[kv[1]["kind"]], -(_norm(kv[1]) or 0) if kv[1]["kind"] == "merge" else 0))
    for name, r in order:
        above = f"{len(r['domains_above_base'])}/5" if r["kind"] != "base" else "-"
        lines.append(f"{name:26s} " + " ".join(f"{_fmt(r['domains'].get(d)):>6s}" for d in DOMAINS)
                     + f" {_fmt(r['general']):>7s} {_fmt(_norm(r)):>6s} {_fmt(r['forgetting']):>6s} {above:>5s}"
                     f" {_fmt(r['gain_over_best_expert']):>9s}")
    lines.append("")
    lines.append("norm. = mean over domains of merge / expert (MergeBench); forget = general score / base's; "
                 ">base = domains where the model beats the base; gain/best = mean domain score minus the best "
                 "expert's.")
    if board["left_out"]:
        lines.append("")
        lines.append("left out:")
        lines += [f"  {n}: {why}" for n, why in board["left_out"].items()]
    study = board.get("study")
    if study:
        lines.append("")
        if study.get("skipped"):
            lines.append(f"study over subsets: not run ({study['skipped']})")
        else:
            lines.append(study.get("text", ""))
    lines.append("")
    lines.append("targets:")
    for t in board["targets"].values():
        lines.append(f"  [{'x' if t['met'] else ' '}] {t['target']}: {_fmt(t['value'])}")
    return "\n".join(lines)


def write_leaderboard(board: dict, results_dir: Path, text_path: Path) -> str:
    """results/leaderboard.json and the text leaderboard (also results/leaderboard.txt)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "leaderboard.json").write_text(json.dumps(board, indent=2) + "\n")
    text = render(board)
    text_path.write_text(text + "\n")
    (results_dir / "leaderboard.txt").write_text(text + "\n")
    return text
