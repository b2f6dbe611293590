"""`hfmerge study` on the tiny family: seeded subsets, lighteval scores, the study's measures checked by hand,
resuming, refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from hfmerge.config import MergeConfig, ModelRef
from hfmerge.errors import HfMergeError
from hfmerge.eval.study import draw_subsets, parse_methods, run_study
from tests.tiny import write_eval_data

TASKS = Path(__file__).parent / "eval_tasks.py"
SPEC = "hfm_test_mcq|0,hfm_test_gen|0"


@pytest.fixture(scope="module")
def study_data(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("studydata")
    write_eval_data(root, seed=1, n_mcq=16)
    monkeypatch_module.setenv("HFMERGE_TEST_EVAL_DATA", str(root))
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_subsets_are_seeded_distinct_and_shared():
    a = draw_subsets(6, [2, 4, 6], 5, seed=3)
    assert a == draw_subsets(6, [2, 4, 6], 5, seed=3)
    assert a != draw_subsets(6, [2, 4, 6], 5, seed=4)
    assert a[6] == [[0, 1, 2, 3, 4, 5]]  # the full set once
    for n in (2, 4):
        assert len(a[n]) == 5 and len({tuple(s) for s in a[n]}) == 5
        assert all(len(s) == n and s == sorted(s) and len(set(s)) == n for s in a[n])
    assert draw_subsets(3, [2], 15, seed=0)[2] == [[0, 1], [0, 2], [1, 2]]  # C(3,2) ≤ repeats: every combination
    with pytest.raises(HfMergeError, match="subset size 1 is out of range"):
        draw_subsets(3, [1], 2, 0)
    with pytest.raises(HfMergeError, match="subset size 4 is out of range"):
        draw_subsets(3, [4], 2, 0)


def test_methods_are_labelled():
    v = parse_methods("task_arithmetic,ties:density=0.1:aggregate=mean,task_arithmetic:scaling=0.3")
    assert [x.label for x in v] == ["task_arithmetic λ=1 (sum)", "task_arithmetic λ=1/n (mean)",
                                    "ties:density=0.1:aggregate=mean", "task_arithmetic:scaling=0.3"]
    assert v[0].params_for(4) == {} and v[1].params_for(4) == {"scaling": 0.25}
    assert v[2].parameters == {"density": 0.1, "aggregate": "mean"}
    with pytest.raises(HfMergeError, match="unknown method"):
        parse_methods("tsvm")
    with pytest.raises(HfMergeError, match="subspace_boost"):
        parse_methods("ties:subspace_boost=2")


def test_study_end_to_end_checked_by_hand(family, study_data, tmp_path, monkeypatch, capsys):
    from hfmerge.cli import main
    from hfmerge.eval.runner import evaluate

    base, experts = family("llama")
    cfg = {"method": "task_arithmetic", "base_model": str(base), "models": [str(e) for e in experts[:2]],
           "dtype": "float32"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "study"
    monkeypatch.setattr(sys, "argv", ["hfmerge", "study", str(tmp_path / "c.yaml"), "--methods",
                                      "task_arithmetic,iso_c", "--sizes", "2", "--repeats", "3", "--tasks", SPEC,
                                      "--custom-tasks", str(TASKS), "-o", str(out)])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    study = json.loads((out / "study.json").read_text())
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def score(key: str) -> float:  # by hand, from lighteval's numbers in each evaluation's results.json
        t = json.loads((out / study["evals"][key] / "results.json").read_text())["tasks"]
        return (t["hfm_test_mcq|0"]["acc"] + t["hfm_test_gen|0"]["em"]) / 2

    assert study["protocol"]["subsets"] == {"2": [[0, 1]]}
    base_s, e0, e1 = score("base"), score("expert/0"), score("expert/1")
    assert study["scores"]["base"] == pytest.approx(base_s)
    for label in ("task_arithmetic λ=1 (sum)", "task_arithmetic λ=1/n (mean)", "iso_c"):
        merged = score(f"{label}/0-1")
        m = study["results"][label]["2"]
        assert m["subsets"] == 1
        assert m["beats_base_share"] == (1.0 if merged > base_s else 0.0)
        assert m["mean_gain_over_base_points"] == pytest.approx(100 * (merged - base_s))
        assert m["mean_gain_over_best_single_points"] == pytest.approx(100 * (merged - max(e0, e1)))
        assert m["rows"][0]["score"] == pytest.approx(merged)
    # the λ = 1/n variant is the mean of the task vectors: the same score as TA with scaling 0.5
    half = evaluate(MergeConfig.from_dict(dict(cfg, parameters={"scaling": 0.5})), SPEC, tmp_path / "half",
                    custom_tasks=TASKS)
    hand = (half["tasks"]["hfm_test_mcq|0"]["acc"] + half["tasks"]["hfm_test_gen|0"]["em"]) / 2
    assert study["scores"]["task_arithmetic λ=1/n (mean)/0-1"] == pytest.approx(hand)
    assert "beats base" in capsys.readouterr().out

    # resuming with one more method evaluates only that method's merge
    lines = []
    config = MergeConfig.from_dict(cfg)
    again = run_study(config, "task_arithmetic,iso_c,tsv_m", [2], 3, None, out, tasks=SPEC, custom_tasks=TASKS,
                      progress=False, log=lines.append)
    assert lines == [f"resuming {out}: 6 of 7 evaluations already done"]
    assert {k: v for k, v in again["scores"].items() if not k.startswith("tsv_m")} == study["scores"]
    assert again["results"]["tsv_m"]["2"]["subsets"] == 1
    with pytest.raises(HfMergeError, match="another protocol \\(seed differs\\)"):
        run_study(config, "iso_c", [2], 3, None, out, tasks=SPEC, custom_tasks=TASKS, seed=1, progress=False)


def test_study_refuses_before_any_work(family, tmp_path):
    base, experts = family("llama")
    config = MergeConfig("task_arithmetic", str(base), [ModelRef(str(e)) for e in experts])
    with pytest.raises(HfMergeError, match="exactly one of a suite"):
        run_study(config, "iso_c", [2], 2, None, tmp_path / "s")
    with pytest.raises(HfMergeError, match="unknown suite"):
        run_study(config, "iso_c", [2], 2, "nope", tmp_path / "s")
    assert not (tmp_path / "s").exists()
