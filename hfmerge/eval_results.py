"""Evaluation results the Hub understands: ``.eval_results/*.yaml`` (huggingface_hub's ``EvalResultEntry`` and YAML
helpers) and ``model-index`` entries that name the benchmark's Hub dataset (``openai/gsm8k``, ``google/IFEval``,
``evalplus/humanevalplus``, ...), from an ``hfmerge eval`` results.json; and the reader the Space uses to get
scores back from a folder or a Hub repo.

One ``.eval_results`` file per benchmark dataset and protocol (variants of a benchmark go in separate files);
one entry per task with the value of the metric that counts, the run's date, its source (hfmerge and lighteval
versions) and notes saying the metric and wherever the protocol differs from the benchmark's official one.
Tasks without a Hub dataset (DoAnythingNow, custom tasks on local data) are kept out of ``.eval_results`` and
named by their task in ``model-index``.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from huggingface_hub import (
    EvalResult,
    EvalResultEntry,
    ModelCard,
    constants,
    eval_result_entries_to_yaml,
    parse_eval_result_entries,
)

FOLDER = constants.EVAL_RESULTS_FOLDER  # ".eval_results"
# canonical Hub dataset of each benchmark (the ids the Hub's benchmark pages use where they exist)
HUB_DATASETS = {
    "ifeval": "google/IFEval", "gsm8k": "openai/gsm8k", "math_500": "HuggingFaceH4/MATH-500",
    "humanevalplus": "evalplus/humanevalplus", "mbppplus": "evalplus/mbppplus",
    "wildguardtest": "allenai/wildguardmix", "harmbench": "walledai/HarmBench", "xstest": "walledai/XSTest",
    "mmlu": "cais/mmlu", "triviaqa": "mandarjoshi/trivia_qa", "squad_v2": "rajpurkar/squad_v2",
    "coqa": "stanfordnlp/coqa", "pubmedqa": "qiaojin/PubMedQA", "wmt14": "wmt/wmt14",
    "mbpp_val": "google-research-datasets/mbpp", "wildjailbreak_val": "allenai/wildjailbreak",
    "ifeval_like_val": "argilla/ifeval-like-data",
}
NO_HUB_COPY = {"do_anything_now"}
# how a task's protocol differs from the benchmark's official (MergeBench's) one
DIFFERENCES = {
    "gsm8k": "lighteval's 8-shot prompt and extractive match, not lm-eval's gsm8k_cot exemplars",
    "math_500": "MATH-500 subset with lighteval's prompt and extractive match, not lm-eval's hendrycks_math",
    "mlmm_": "lighteval's Okapi cloze formulation",
    "mmlu": "lighteval's generative letter match",
    "harmbench": "prompt = behaviour only (no context), as safety-eval",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _task(key: str) -> str:
    return key.split("|")[0]


def counting_metrics() -> dict:
    """Task -> metric that counts, from every named suite."""
    from hfmerge.eval.suites import SUITES

    out: dict = {}
    for suite in SUITES.values():
        for task, metric in suite.metric.items():
            out.setdefault(task, metric)
    return out


def hub_dataset(task: str, results: dict | None = None) -> str | None:
    """The Hub dataset id a task's score belongs to, or None (no Hub copy, or local data only)."""
    if task in NO_HUB_COPY:
        return None
    for prefix in (task, task.split(":")[0]):
        if prefix in HUB_DATASETS:
            return HUB_DATASETS[prefix]
    recorded = ((results or {}).get("datasets") or {}).get(task) or next(
        (v for k, v in ((results or {}).get("datasets") or {}).items() if _task(k) == task), None)
    if recorded and _HUB_ID.match(recorded) and not Path(recorded).expanduser().exists():
        return recorded
    return None


def _notes(task: str, key: str, metric: str, results: dict) -> str:
    parts = [f"metric={metric}", f"{key.split('|')[1] if '|' in key else '0'}-shot"]
    protocol = (results.get("protocols") or {}).get(key)
    if protocol:
        parts.append(protocol)
    diff = next((v for k, v in DIFFERENCES.items() if task == k or (k.endswith("_") and task.startswith(k))), None)
    if diff:
        parts.append(diff)
    if task in ("humanevalplus", "mbppplus") and "greedy" in (protocol or ""):
        parts.append("not MergeBench's 10-sample protocol")
    if metric.endswith("_proxy"):
        parts.append("proxy judge: refusal string match, not WildGuard")
    if results.get("limit"):
        parts.append(f"partial: first {results['limit']} samples")
    return "; ".join(parts)


def _source(results: dict) -> str:
    return f"hfmerge {results.get('hfmerge_version') or '?'} (lighteval {results.get('lighteval_version') or '?'})"


def entries(results: dict, repo_id: str | None = None, revision: str | None = None
            ) -> dict[str, list[EvalResultEntry]]:
    """``.eval_results`` file name -> its entries, for every task that has a Hub dataset."""
    from hfmerge.eval.scores import counted_metric

    metric_map = counting_metrics()
    url = f"{constants.ENDPOINT}/{repo_id}/blob/{revision or 'main'}/results.json" if repo_id else None
    files: dict[str, list[EvalResultEntry]] = {}
    for key, metrics in sorted((results.get("tasks") or {}).items()):
        task = _task(key)
        dataset = hub_dataset(task, results)
        metric = counted_metric(results, task, metric_map)
        if dataset is None or metric is None or not isinstance(metrics.get(metric), int | float):
            continue
        notes = _notes(task, key, metric, results)
        protocol_tag = "-sampled" if "samples per problem" in (results.get("protocols") or {}).get(key, "") else ""
        name = dataset.split("/")[-1].lower() + protocol_tag + ("-proxy" if metric.endswith("_proxy") else "")
        files.setdefault(f"{name}.yaml", []).append(EvalResultEntry(
            dataset_id=dataset, task_id=task, value=round(float(metrics[metric]), 6), date=results.get("date"),
            dataset_revision=(results.get("dataset_revisions") or {}).get(key),
            source_url=url, source_name=_source(results) if url else None, notes=notes))
    return files


def files(results: dict, repo_id: str | None = None, revision: str | None = None) -> dict[str, bytes]:
    """``path_in_repo`` -> YAML bytes of every ``.eval_results`` file."""
    return {f"{FOLDER}/{name}": yaml.safe_dump(eval_result_entries_to_yaml(batch), sort_keys=False).encode()
            for name, batch in entries(results, repo_id, revision).items()}


def write(folder: str | Path, results: dict, repo_id: str | None = None) -> list[Path]:
    """Write the ``.eval_results`` files into a model folder."""
    out = []
    for rel, data in files(results, repo_id).items():
        path = Path(folder) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out.append(path)
    return out


def model_index(results: dict) -> list[EvalResult]:
    """Legacy ``model-index`` entries: every metric of every task, ``dataset.type`` = the Hub dataset id."""
    out = []
    for key, metrics in sorted((results.get("tasks") or {}).items()):
        task = _task(key)
        dataset = hub_dataset(task, results) or task
        for metric, value in sorted(metrics.items()):
            if metric.endswith("_stderr") or not isinstance(value, int | float) or value != value:
                continue
            out.append(EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=key,
                                  metric_type=metric, metric_value=float(value), source_name="lighteval",
                                  source_url="https://github.com/huggingface/lighteval"))
    return out


# ---- reading back (the Space) -----------------------------------------------------------------------------------
def _from_entries(entries_: list[EvalResultEntry], tasks: dict) -> None:
    for e in entries_:
        m = re.search(r"metric=([^;]+)", e.notes or "")
        tasks.setdefault(e.task_id, {})[m.group(1).strip() if m else "value"] = float(e.value)


def parse_files(texts: dict[str, str], readme: str | None = None) -> dict | None:
    """A results dict ({"tasks": {task: {metric: value}}, "sources": [...]}) from the texts of ``.eval_results``
    files and a README's ``model-index``; None when neither holds a score. Unparseable files are skipped."""
    tasks: dict = {}
    sources = []
    for name, text in sorted(texts.items()):
        try:
            _from_entries(parse_eval_result_entries(yaml.safe_load(text) or []), tasks)
            sources.append(name)
        except Exception:  # noqa: BLE001 - a malformed file on a repo is not the reader's error
            continue
    if readme:
        try:
            for r in ModelCard(readme).data.eval_results or []:
                tasks.setdefault(r.dataset_name or r.dataset_type, {}).setdefault(r.metric_type, r.metric_value)
            sources.append("README.md model-index")
        except Exception:  # noqa: BLE001
            pass
    return {"tasks": tasks, "sources": sources} if tasks else None


def read_results(folder: str | Path) -> dict | None:
    """Scores of a model folder from its ``.eval_results/*.yaml`` and its card's ``model-index``."""
    folder = Path(folder)
    texts = {p.name: p.read_text() for p in sorted((folder / FOLDER).glob("*.yaml"))}
    readme = (folder / "README.md").read_text() if (folder / "README.md").is_file() else None
    return parse_files(texts, readme)


def read_repo_results(repo_id: str, revision: str | None = None, endpoint: str | None = None,
                      cache_dir: str | None = None) -> dict | None:
    """Scores of a Hub model repo from its ``.eval_results`` files and card (downloaded through huggingface_hub)."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=endpoint)
    present = [f for f in api.list_repo_files(repo_id, revision=revision)
               if f.startswith(FOLDER + "/") and f.endswith((".yaml", ".yml")) or f == "README.md"]

    def get(name: str) -> str:
        return Path(hf_hub_download(repo_id, name, revision=revision, endpoint=endpoint,
                                    cache_dir=cache_dir)).read_text()

    texts = {Path(f).name: get(f) for f in present if f != "README.md"}
    return parse_files(texts, get("README.md") if "README.md" in present else None)
