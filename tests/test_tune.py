"""Tuning: grid parsing, reuse of the merged task vector across λ, and picking the known-best point."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import yaml

from hfmerge.config import MergeConfig, ModelRef
from hfmerge.engine import merge_state_dict
from hfmerge.errors import HfMergeError
from hfmerge.tune import parse_grid, tune, write_results


def test_parse_grid():
    assert parse_grid("scaling=0.2:1.0:0.2,density=0.1,0.2,0.3,aggregate=sum,mean") == {
        "scaling": [0.2, 0.4, 0.6, 0.8, 1.0], "density": [0.1, 0.2, 0.3], "aggregate": ["sum", "mean"]}
    for bad in ("0.1,0.2", "scaling=1:0:0.1", "scaling=a:b:c"):
        with pytest.raises(HfMergeError):
            parse_grid(bad)


def distance_scorer(target: dict[str, torch.Tensor]):
    def score(state: dict[str, torch.Tensor]) -> float:
        return -sum(float((state[n].float() - t.float()).pow(2).sum()) for n, t in target.items())
    return score


@pytest.mark.parametrize(("method", "params", "grid", "best", "merges"), [
    ("task_arithmetic", {"scaling": 0.6}, "scaling=0.2:1.0:0.2", {"scaling": 0.6}, 1),
    ("ties", {"density": 0.2, "scaling": 0.8}, "density=0.1,0.2,0.4,scaling=0.4:1.0:0.2",
     {"density": 0.2, "scaling": 0.8}, 3),
    ("localize_stitch", {"sparsity": 0.3}, "sparsity=0.1,0.3,0.5", {"sparsity": 0.3}, 3),
])
def test_tune_finds_the_known_best_point(family, tmp_path, method, params, grid, best, merges):
    base, experts = family("llama")
    models = [ModelRef(str(e)) for e in experts]
    target = merge_state_dict(MergeConfig(method, str(base), models, dict(params)))
    config = MergeConfig(method, str(base), models, {})
    result = tune(config, parse_grid(grid), distance_scorer(target), progress=False)
    assert {k: result.best["parameters"][k] for k in best} == best
    assert result.best["score"] > -1e-3  # the reused task vector reproduces the direct merge
    assert result.merges == merges
    assert len(result.rows) == len(list(itertools.product(*parse_grid(grid).values())))
    best_yaml = write_results(result, config, tmp_path / "tune")
    saved = yaml.safe_load(best_yaml.read_text())
    assert saved["parameters"] == result.best["parameters"]
    cost = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert cost["evaluations"] == len(result.rows) and cost["seconds"] >= 0


def test_out_of_range_grid_is_refused_before_work(family):
    base, experts = family("llama")
    config = MergeConfig("ties", str(base), [ModelRef(str(e)) for e in experts])
    with pytest.raises(HfMergeError, match="density=1.5"):
        tune(config, {"density": [0.5, 1.5]}, lambda s: 0.0, progress=False)
