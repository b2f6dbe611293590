"""Evaluation: `hfmerge eval` equals lighteval's own Pipeline; in-memory merges; MergeBench's measures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hfmerge.config import MergeConfig, ModelRef
from hfmerge.engine import merge
from hfmerge.errors import HfMergeError
from hfmerge.eval.scores import measures
from tests.tiny import write_eval_data

TASKS = Path(__file__).parent / "eval_tasks.py"
SPEC = "hfm_test_mcq|0,hfm_test_gen|0"


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    write_eval_data(root, seed=0, n_mcq=12)
    os.environ["HFMERGE_TEST_EVAL_DATA"] = str(root)
    return root


def lighteval_directly(model_dir: Path, out: Path) -> dict:
    """lighteval's own Pipeline, offline: the registry loads only the custom task module (notes' fix A)."""
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.transformers.transformers_model import TransformersModelConfig
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters
    from lighteval.tasks.registry import Registry

    original = Registry.load_all_task_configs
    Registry.load_all_task_configs = staticmethod(
        lambda custom_tasks=None, load_multilingual=False: Registry._extract_configs(
            Registry.create_custom_tasks_module(custom_tasks)))
    try:
        pipeline = Pipeline(
            tasks=SPEC,
            pipeline_parameters=PipelineParameters(launcher_type=ParallelismManager.NONE,
                                                   custom_tasks_directory=str(TASKS)),
            evaluation_tracker=EvaluationTracker(output_dir=str(out)),
            model_config=TransformersModelConfig(model_name=str(model_dir), batch_size=4, dtype="float32",
                                                 cache_dir=str(out / "cache")),
        )
    finally:
        Registry.load_all_task_configs = original
    pipeline.evaluate()
    return pipeline.get_results()["results"]


def test_eval_equals_lighteval_and_in_memory_merge(family, eval_data, tmp_path):
    from hfmerge.eval.runner import evaluate

    base, experts = family("llama")
    cfg = MergeConfig("task_arithmetic", str(base), [ModelRef(str(e)) for e in experts], {"scaling": 0.5},
                      dtype="float32")
    merge(cfg, tmp_path / "merged", progress=False)
    ours = evaluate(tmp_path / "merged", SPEC, tmp_path / "eval", custom_tasks=TASKS, batch_size=4)
    assert not list((tmp_path / "merged").rglob("*.parquet")), "no prediction cache inside the model folder"
    theirs = lighteval_directly(tmp_path / "merged", tmp_path / "direct")
    assert ours["tasks"]["hfm_test_mcq|0"]["acc"] == theirs["hfm_test_mcq:0"]["acc"]
    assert ours["tasks"]["hfm_test_gen|0"]["em"] == theirs["hfm_test_gen:0"]["em"]
    assert "acc_stderr" in ours["tasks"]["hfm_test_mcq|0"]
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["tasks"] == ours["tasks"] and saved["lighteval_version"]
    assert list((tmp_path / "eval" / "results").rglob("results_*.json")), "lighteval's own results file"
    # the same merge evaluated in memory, never written, scores the same
    in_memory = evaluate(cfg, SPEC, tmp_path / "eval-mem", custom_tasks=TASKS, batch_size=4)
    assert in_memory["tasks"] == ours["tasks"]
    # re-merging into the same folder with other weights is re-evaluated, not served from a cache
    merge(MergeConfig("soup", str(base), [ModelRef(str(experts[0]))], dtype="float32"), tmp_path / "merged",
          overwrite=True, progress=False)
    again = evaluate(tmp_path / "merged", "hfm_test_mcq|0", tmp_path / "eval2", custom_tasks=TASKS, batch_size=4)
    direct = lighteval_directly(tmp_path / "merged", tmp_path / "direct2")
    assert again["tasks"]["hfm_test_mcq|0"]["acc"] == direct["hfm_test_mcq:0"]["acc"]


def test_eval_errors(family, eval_data, tmp_path):
    from hfmerge.eval.runner import evaluate
    from hfmerge.eval.suites import get_suite

    with pytest.raises(HfMergeError, match="unknown suite 'nope'.*mergebench"):
        get_suite("nope")
    (tmp_path / "notlm").mkdir()
    (tmp_path / "notlm" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(HfMergeError, match="not a causal LM"):
        evaluate(tmp_path / "notlm", SPEC, tmp_path / "o", custom_tasks=TASKS)
    base, _ = family("llama")
    with pytest.raises(HfMergeError, match="hfm_test_nope"):
        evaluate(base, "hfm_test_nope|0", tmp_path / "o", custom_tasks=TASKS)


def results(tasks: dict) -> dict:
    return {"model": "x", "tasks": {f"{t}|0": {"acc": v, "acc_stderr": 0.01} for t, v in tasks.items()}}


def test_measures_by_hand():
    domains = {"math": ["m1", "m2"], "code": ["c1"]}
    base = results({"m1": 0.2, "m2": 0.2, "c1": 0.1, "k": 0.8})
    experts = {"math": results({"m1": 0.8, "m2": 0.6, "c1": 0.1, "k": 0.6}),
               "code": results({"m1": 0.2, "m2": 0.2, "c1": 0.5, "k": 0.7})}
    merged = results({"m1": 0.6, "m2": 0.5, "c1": 0.4, "k": 0.72})
    m = measures(merged, base, experts, domains, forgetting_tasks=["k"])
    assert m["normalized"]["math"] == pytest.approx(0.55 / 0.7)
    assert m["normalized"]["code"] == pytest.approx(0.4 / 0.5)
    assert m["normalized"]["mean"] == pytest.approx((0.55 / 0.7 + 0.8) / 2)
    assert m["forgetting"] == pytest.approx(0.72 / 0.8)
    assert m["beats_base"] is True  # 0.475 > 0.15
    # best single expert: math expert (0.7 + 0.1) / 2 = 0.4 vs code expert (0.2 + 0.5) / 2 = 0.35
    assert m["gain_over_best_expert"] == pytest.approx(0.475 - 0.4)


def test_tune_cli_scores_equal_eval_of_each_candidate(family, eval_data, tmp_path, monkeypatch, capsys):
    import sys

    import yaml

    from hfmerge.cli import main
    from hfmerge.eval.runner import evaluate

    base, experts = family("llama")
    cfg = {"method": "task_arithmetic", "base_model": str(base), "models": [str(e) for e in experts],
           "dtype": "float32"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(sys, "argv", ["hfmerge", "tune", str(tmp_path / "c.yaml"), "--grid", "scaling=0.3,0.9",
                                      "--tasks", SPEC, "--custom-tasks", str(TASKS), "-o", str(tmp_path / "tune")])
    try:
        main()
    except SystemExit as e:
        assert e.code == 0
    cost = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert cost["evaluations"] == 2 and cost["merges"] == 1  # one merged task vector serves both λ
    for row in cost["rows"]:
        merged = tmp_path / f"m{row['parameters']['scaling']}"
        merge(MergeConfig.from_dict(dict(cfg, parameters=row["parameters"])), merged, progress=False)
        res = evaluate(merged, SPEC, tmp_path / f"e{row['parameters']['scaling']}", custom_tasks=TASKS)
        expected = (res["tasks"]["hfm_test_mcq|0"]["acc"] + res["tasks"]["hfm_test_gen|0"]["em"]) / 2
        assert row["score"] == pytest.approx(expected)
    best = yaml.safe_load((tmp_path / "tune" / "best.yaml").read_text())
    assert best["parameters"] == max(cost["rows"], key=lambda r: r["score"])["parameters"]
