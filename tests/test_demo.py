"""The demo end to end, at the reduced `test` size: real tiny experts, local Hub, every method, scores, pushes."""

import json

from huggingface_hub import HfApi, ModelCard

from hfmerge.demo import DOMAINS, run


def test_demo_end_to_end(local_hub, tmp_path):
    rows = run(tmp_path / "demo", size="test", hub_url=local_hub.url, log=lambda *a: None)
    assert len(rows) == 10  # 9 method settings + tuned task arithmetic
    for name, m in rows.items():
        assert m["normalized"] and m["normalized"]["mean"] is not None, name
        assert (tmp_path / "demo" / "results" / name / "scores.json").is_file()
    # every merge has a card and results on the Hub
    api = HfApi()
    pushed = {m.id for m in api.list_models(filter="hfmerge")}
    assert {f"{local_hub.user}/mini-{n.replace('_', '-')}" for n in rows} <= pushed
    card = ModelCard.load(f"{local_hub.user}/mini-ties")
    assert card.data.eval_results and "normalized performance" in card.text
    # experts beat the base on their own domain
    evals = tmp_path / "demo" / "evals"
    for d in DOMAINS:
        base = json.loads((evals / "base" / "results.json").read_text())["tasks"][f"mini_{d}_test|0"]["em"]
        expert = json.loads((evals / f"expert-{d}" / "results.json").read_text())["tasks"][f"mini_{d}_test|0"]["em"]
        assert expert > base, (d, base, expert)
    tune = json.loads((tmp_path / "demo" / "tune" / "tune.json").read_text())
    assert tune["evaluations"] == 5 and tune["merges"] == 1
