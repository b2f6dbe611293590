"""The model card of a merged model: Hub metadata (validated by huggingface_hub) + a rendered body."""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hfmerge.methods.registry import get_method
from hfmerge.sources import HUB_ID

TEMPLATE = Path(__file__).parent / "model_cards" / "merged_model.md.j2"
MERGEBENCH = "He et al. 2025, MergeBench: A Benchmark for Merging Domain-Specialized LLMs"


def _is_hub(ref: str) -> bool:
    return bool(HUB_ID.match(ref)) and not Path(ref).expanduser().exists()


def _link(ref: str) -> str:
    repo = ref.split("@")[0]
    return f"[{repo}](https://huggingface.co/{repo})" if _is_hub(ref) else f"`{ref}`"


def _eval_results(results: dict) -> list[EvalResult]:
    """model-index entries naming each benchmark's Hub dataset (hfmerge.eval_results)."""
    from hfmerge.eval_results import model_index

    return model_index(results)


def _results_markdown(results: dict) -> str:
    """Per-task scores (± stderr), then the MergeBench measures when present."""
    lines = ["| task | metric | score |", "|---|---|---|"]
    for task, metrics in sorted((results.get("tasks") or {}).items()):
        for metric, value in sorted(metrics.items()):
            if metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            err = metrics.get(f"{metric}_stderr")
            lines.append(f"| {task} | {metric} | {value:.4f}" + (f" ± {err:.4f}" if err else "") + " |")
    measures = [("normalized performance (mean over domains)", (results.get("normalized") or {}).get("mean")),
                ("forgetting (merged / base on the forgetting suite)", results.get("forgetting")),
                ("beats the base", results.get("beats_base")),
                ("gain over the best single expert", results.get("gain_over_best_expert"))]
    shown = [(k, v) for k, v in measures if v is not None]
    if shown:
        lines += ["", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown]
    protocols = results.get("protocols") or {}
    if protocols:
        lines += ["", "How tasks ran (where it differs from lighteval's defaults):"]
        lines += [f"- {task}: {how}" for task, how in sorted(protocols.items())]
    per_domain = {k: v for k, v in (results.get("normalized") or {}).items() if k != "mean"}
    if per_domain:
        lines += ["", "Normalized performance per domain (merged / expert): "
                  + ", ".join(f"{d} {v:.3f}" for d, v in sorted(per_domain.items()))]
    return "\n".join(lines)


def render_card(config: dict, report: dict, repo_id: str | None = None, results: dict | None = None) -> ModelCard:
    """Card for a merge from its resolved config (hfmerge.yaml) and report (merge_report.json), and optionally
    evaluation results: ``{"tasks": {task: {metric: value, metric_stderr: value}}, "normalized":
    {domain: x, "mean": y}, "forgetting": z, "beats_base": bool, "gain_over_best_expert": g}``."""
    method = get_method(config["method"])
    refs = [config["base_model"]] + [m if isinstance(m, str) else m["model"] for m in config["models"]]
    weights = [1.0] + [1.0 if isinstance(m, str) else m.get("weight", 1.0) for m in config["models"]]
    hub_refs = [r.split("@")[0] for r in refs if _is_hub(r)]
    tags = ["merge", "hfmerge", method.name]
    if any(r.startswith("MergeBench/") for r in hub_refs) or config.get("mergebench"):
        tags.append("mergebench")
    name = repo_id.split("/")[-1] if repo_id else f"{method.name}-merge"
    evals = _eval_results(results) if results else []
    data = ModelCardData(
        model_name=name if evals else None,
        base_model=hub_refs or None,
        base_model_relation="merge" if hub_refs else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        license=report.get("license"),
        eval_results=evals or None,
    )
    revisions = {s["ref"]: s.get("revision") for s in report["sources"]}
    sources = [
        {"role": "base" if i == 0 else "expert", "link": _link(r), "revision": revisions.get(r), "weight": w}
        for i, (r, w) in enumerate(zip(refs, weights, strict=True))
    ]
    body = jinja2.Template(TEMPLATE.read_text(), keep_trailing_newline=True).render(
        card_data=data.to_yaml(),
        model_name=name,
        base_link=_link(refs[0]),
        experts=refs[1:],
        method=method,
        parameters=config.get("parameters") or {},
        skip=config.get("skip"),
        sources=sources,
        report=report,
        config_yaml=yaml.safe_dump({k: v for k, v in config.items() if k not in ("revisions", "mergekit_config")},
                                   sort_keys=False),
        mergekit_config=config.get("mergekit_config"),
        results=_results_markdown(results) if results else None,
        repo_id=repo_id or "path/to/this/model",
        citations=[method.paper, MERGEBENCH],
    )
    return ModelCard(body)


def write_card(folder: Path, config: dict, report: dict, repo_id: str | None = None,
               results: dict | None = None) -> None:
    (folder / "README.md").write_text(str(render_card(config, report, repo_id, results)))


def base_license(readme: bytes | None) -> str | None:
    """The license in a model card's YAML front matter, if any."""
    if not readme:
        return None
    try:
        return ModelCard(readme.decode(errors="replace")).data.to_dict().get("license")
    except Exception:  # a malformed card on the base is not our error to raise
        return None
