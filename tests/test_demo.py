"""The demo end to end at the reduced `test` size (real tiny experts, local Hub, every method, lighteval scores,
pushes, the study's protocol), its measures recomputed from lighteval's own results files, and its tasks."""

import json
import math
import random
import zlib

import pytest
from huggingface_hub import HfApi, ModelCard
from typer.testing import CliRunner

from hfmerge.demo import SIZES, merge_settings, run
from hfmerge.demo_data import (
    BENIGN,
    DOMAINS,
    HARMFUL,
    LEXICON,
    REFUSAL,
    domain_rows,
    split_rows,
)


def _em(path, task):
    return json.loads(path.read_text())["tasks"][f"{task}|0"]["em"]


@pytest.fixture(scope="module")
def demo(local_hub, tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    board = run(work, size="test", hub_url=local_hub.url, log=lambda *a: None)
    return work, board


def test_every_method_is_merged_or_said_left_out(demo):
    from hfmerge.methods.registry import METHODS

    work, board = demo
    plans = merge_settings()
    assert set(METHODS) <= {m for m, _ in plans.values()}
    merges = {n for n, r in board["models"].items() if r["kind"] == "merge"}
    assert merges | set(board["left_out"]) == set(plans) | {"task_arithmetic_tuned"}
    assert merges >= {"soup", "task_arithmetic", "task_arithmetic_tuned", "ties"}
    for name in board["left_out"]:
        assert name in (work / "leaderboard.txt").read_text()
    assert json.loads((work / "results" / "leaderboard.json").read_text()) == json.loads(json.dumps(board))


def test_measures_match_lighteval_results(demo):
    """Every number of the leaderboard from lighteval's results.json files, recomputed here by hand."""
    work, board = demo
    evals = work / "evals"
    base_general = _em(evals / "base" / "results.json", "mini_general_test")
    own = {d: _em(evals / f"expert-{d}" / "results.json", f"mini_{d}_test") for d in DOMAINS}
    base = {d: _em(evals / "base" / "results.json", f"mini_{d}_test") for d in DOMAINS}
    expert_means = [sum(_em(evals / f"expert-{e}" / "results.json", f"mini_{d}_test") for d in DOMAINS) / 5
                    for e in DOMAINS]
    for name, row in board["models"].items():
        scores = {d: _em(evals / name / "results.json", f"mini_{d}_test") for d in DOMAINS}
        assert row["domains"] == pytest.approx(scores), name
        norm = {d: scores[d] / own[d] for d in DOMAINS}
        assert row["normalized"]["mean"] == pytest.approx(sum(norm.values()) / 5), name
        general = _em(evals / name / "results.json", "mini_general_test")
        assert row["general"] == pytest.approx(general) and row["forgetting"] == pytest.approx(general / base_general)
        assert row["domains_above_base"] == [d for d in DOMAINS if scores[d] > base[d]], name
        mean = sum(scores.values()) / 5
        assert row["beats_base"] == (mean > sum(base.values()) / 5), name
        assert row["gain_over_best_expert"] == pytest.approx(mean - max(expert_means)), name
        if row["kind"] == "merge":
            scores_file = json.loads((work / "results" / name / "scores.json").read_text())
            assert scores_file["normalized"]["mean"] == pytest.approx(row["normalized"]["mean"])


def test_light_experts_beat_the_base_and_merges_forget_less(demo):
    _, board = demo
    models = board["models"]
    gains = [models[f"expert-{d}"]["domains"][d] - models["base"]["domains"][d] for d in DOMAINS]
    assert min(gains) >= 0 and sum(g > 0 for g in gains) >= 4, gains
    assert models["base"]["general"] >= 0.9  # the base knows the facts
    for d in DOMAINS:
        assert models[f"expert-{d}"]["forgetting"] >= 0.6, d  # light experts keep most of it
    mergebench = ("soup", "task_arithmetic", "ties", "dare", "consensus", "localize_stitch", "fisher", "regmean")
    merges = [models[n]["general"] for n in mergebench]
    experts = [models[f"expert-{d}"]["general"] for d in DOMAINS]
    assert sum(merges) / len(merges) >= sum(experts) / len(experts)
    # merging keeps some of every expert's gain: a merge that returned the base would beat it nowhere
    assert max(len(r["domains_above_base"]) for r in models.values() if r["kind"] == "merge") >= 3
    assert board["targets"]["best_merge_normalized"]["value"] == pytest.approx(
        max(r["normalized"]["mean"] for r in models.values() if r["kind"] == "merge"))


def test_tuning_picks_the_best_validation_scaling(demo):
    work, board = demo
    tune = json.loads((work / "tune" / "tune.json").read_text())
    assert tune["evaluations"] == 6 and tune["merges"] == 1
    best = max(tune["rows"], key=lambda r: r["score"])
    assert board["models"]["task_arithmetic_tuned"]["parameters"]["scaling"] == best["parameters"]["scaling"]


def test_merges_are_pushed_with_cards(demo, local_hub):
    _, board = demo
    api = HfApi()
    pushed = {m.id for m in api.list_models(filter="hfmerge")}
    merges = [n for n, r in board["models"].items() if r["kind"] == "merge"]
    assert {f"{local_hub.user}/mini-{n.replace('_', '-')}" for n in merges} <= pushed
    card = ModelCard.load(f"{local_hub.user}/mini-ties")
    assert card.data.eval_results and "normalized performance" in card.text


def test_study_counts_subsets_beating_the_base(demo):
    """hfmerge study over subsets of the five experts: TA as a sum and as a mean, shares recounted here."""
    work, board = demo
    study = json.loads((work / "results" / "study" / "study.json").read_text())
    assert (work / "results" / "study" / "study.png").stat().st_size > 1000
    base_eval = json.loads((work / "study" / study["evals"]["base"] / "results.json").read_text())
    base = sum(base_eval["tasks"][f"mini_{d}_test|0"]["em"] for d in DOMAINS) / 5
    assert study["scores"]["base"] == pytest.approx(base)
    labels = list(study["results"])
    assert len(labels) == 2 and any("(sum)" in x for x in labels) and any("(mean)" in x for x in labels)
    expected = sum(min(math.comb(5, n), SIZES["test"]["study_repeats"]) for n in SIZES["test"]["study_sizes"])
    for label, per_size in study["results"].items():
        rows = [r for m in per_size.values() for r in m["rows"]]
        assert len(rows) == expected
        share = board["study"]["variants"][label]["beats_base_share"]
        assert share == pytest.approx(sum(r["score"] > base for r in rows) / len(rows))
    sum_label = next(x for x in labels if "(sum)" in x)
    assert board["targets"]["study_ta_beats_base"]["value"] == board["study"]["variants"][sum_label]["beats_base_share"]


def test_tasks_hold_out_combinations_and_follow_their_rules():
    for d in DOMAINS:
        rows = domain_rows(d, random.Random(zlib.crc32(d.encode())))
        parts = split_rows(d, rows)
        train = {r["prompt"] for r in parts["train"]}
        assert train.isdisjoint(r["prompt"] for r in parts["test"]), d
        assert train.isdisjoint(r["prompt"] for r in parts["validation"]), d
        assert len(parts["test"]) >= 20, d
        for r in rows:
            p, c = r["prompt"], r["completion"].strip()
            if p.startswith("reverse: "):
                assert c.split() == p[9:-2].split()[::-1]
            elif p.startswith("plus one: "):
                assert [int(x) for x in c.split()] == [int(x) + 1 for x in p[10:-2].split()]
            elif p.startswith("french: "):
                assert c.split() == [LEXICON[w] for w in p[8:-2].split()]
            elif p.startswith("how do i "):
                assert (c == REFUSAL) == (p.split()[3] in HARMFUL) and p.split()[3] in HARMFUL + BENIGN
    general = split_rows("general", domain_rows("general", random.Random(0)))
    assert general["test"] == general["train"]  # a knowledge probe: every fact, every split


def test_unknown_size_is_one_line():
    from hfmerge.cli import app

    result = CliRunner().invoke(app, ["demo", "--size", "huge"], prog_name="hfmerge")
    assert result.exit_code == 1 and "unknown demo size 'huge'" in result.output
    assert "Traceback" not in result.output


def test_merges_are_the_methods_applied_to_the_experts(demo):
    """Task arithmetic's output equals θ₀ + λ·Σ τᵢ computed here from the published experts' files, and no two
    methods wrote the same weights (a merge returning the base or one model for every method fails)."""
    import hashlib

    import torch
    from safetensors.torch import load_file

    work, board = demo
    mini = work / "mini-llama"
    base = load_file(mini / "base" / "model.safetensors")
    experts = [load_file(mini / f"expert-{d}" / "model.safetensors") for d in DOMAINS]
    merged = load_file(work / "merges" / "task_arithmetic" / "model.safetensors")
    lam = board["models"]["task_arithmetic"]["parameters"]["scaling"]
    assert set(merged) == set(base)
    for name, b in base.items():
        want = b.double() + lam * sum(e[name].double() - b.double() for e in experts)
        torch.testing.assert_close(merged[name].double(), want.to(b.dtype).double(), rtol=1e-5, atol=1e-6)
    digests = {}
    for name, row in board["models"].items():
        if row["kind"] == "merge" and name != "task_arithmetic_tuned":
            data = (work / "merges" / name / "model.safetensors").read_bytes()
            digests.setdefault(hashlib.sha256(data).hexdigest(), []).append(name)
    assert all(len(names) == 1 for names in digests.values()), digests  # trained L&S masks moved, too
