"""The model card of a merged model: Hub metadata (validated by huggingface_hub) + a rendered body."""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml
from huggingface_hub import ModelCard, ModelCardData

from hfmerge.methods.registry import get_method
from hfmerge.sources import HUB_ID

TEMPLATE = Path(__file__).parent / "model_cards" / "merged_model.md.j2"
MERGEBENCH = "He et al. 2025, MergeBench: A Benchmark for Merging Domain-Specialized LLMs"


def _is_hub(ref: str) -> bool:
    return bool(HUB_ID.match(ref)) and not Path(ref).expanduser().exists()


def _link(ref: str) -> str:
    repo = ref.split("@")[0]
    return f"[{repo}](https://huggingface.co/{repo})" if _is_hub(ref) else f"`{ref}`"


def render_card(config: dict, report: dict, repo_id: str | None = None, results: str | None = None) -> ModelCard:
    """Card for a merge from its resolved config (hfmerge.yaml) and report (merge_report.json)."""
    method = get_method(config["method"])
    refs = [config["base_model"]] + [m if isinstance(m, str) else m["model"] for m in config["models"]]
    weights = [1.0] + [1.0 if isinstance(m, str) else m.get("weight", 1.0) for m in config["models"]]
    hub_refs = [r.split("@")[0] for r in refs if _is_hub(r)]
    tags = ["merge", "hfmerge", method.name]
    if any(r.startswith("MergeBench/") for r in hub_refs) or config.get("mergebench"):
        tags.append("mergebench")
    data = ModelCardData(
        base_model=hub_refs or None,
        base_model_relation="merge" if hub_refs else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        license=config.get("license"),
    )
    revisions = {s["ref"]: s.get("revision") for s in report["sources"]}
    sources = [
        {"role": "base" if i == 0 else "expert", "link": _link(r), "revision": revisions.get(r), "weight": w}
        for i, (r, w) in enumerate(zip(refs, weights, strict=True))
    ]
    name = repo_id.split("/")[-1] if repo_id else f"{method.name}-merge"
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
        config_yaml=yaml.safe_dump({k: v for k, v in config.items() if k != "revisions"}, sort_keys=False),
        results=results,
        repo_id=repo_id or "path/to/this/model",
        citations=[method.paper, MERGEBENCH],
    )
    return ModelCard(body)


def write_card(folder: Path, config: dict, report: dict, repo_id: str | None = None) -> None:
    (folder / "README.md").write_text(str(render_card(config, report, repo_id)))
