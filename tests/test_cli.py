"""`hfmerge merge` from the command line: both forms, and every kind of bad input."""

from __future__ import annotations

import subprocess
import sys

import torch
import yaml

from hfmerge.cli import main
from tests.reference import load_model


def run(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["hfmerge", *map(str, argv)])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_flag_form_equals_config_form(family, tmp_path, monkeypatch, capsys):
    base, experts = family("llama")
    code, out, _ = run(monkeypatch, capsys, "merge", "--method", "ties", "--base", base, "--models", *experts,
                       "--set", "density=0.3", "--set", "aggregate=mean", "-o", tmp_path / "a", "-q")
    assert code == 0 and "merged 3 experts with ties" in out
    cfg = {"method": "ties", "base_model": str(base), "models": [str(e) for e in experts],
           "parameters": {"density": 0.3, "aggregate": "mean"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code, _, _ = run(monkeypatch, capsys, "merge", tmp_path / "c.yaml", "-o", tmp_path / "b", "-q")
    assert code == 0
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_console_script_and_methods_listing(tmp_path):
    res = subprocess.run([sys.executable, "-m", "hfmerge.cli", "methods"], capture_output=True, text=True)
    assert res.returncode == 0
    for name in ("soup", "task_arithmetic", "ties", "dare", "consensus", "localize_stitch"):
        assert name in res.stdout
    res = subprocess.run([sys.executable, "-m", "hfmerge.cli", "merge", "--method", "soup", "--base",
                          str(tmp_path / "nope"), "--models", str(tmp_path / "nope2"), "-o", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "does not exist" in res.stderr


def _bad_inputs(family, tmp_path):
    base, experts = family("llama")
    gemma, _ = family("gemma2")
    e = [str(x) for x in experts]
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((base / "config.json").read_text())
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    from safetensors.torch import save_file

    state = load_model(experts[0])
    state["model.layers.0.mlp.extra.weight"] = state.pop("model.layers.0.mlp.up_proj.weight")
    save_file(state, renamed / "model.safetensors", metadata={"format": "pt"})
    (renamed / "config.json").write_text((base / "config.json").read_text())
    (tmp_path / "bad.yaml").write_text("method: ties\nbase_model: [unclosed\n")
    (tmp_path / "noskip.yaml").write_text(yaml.safe_dump({"method": "soup", "base_model": str(base),
                                                          "models": e, "skip": "all"}))
    exists = tmp_path / "exists"
    exists.mkdir()
    flag = ["merge", "--base", str(base), "--models"]
    return [
        ([*flag, str(tmp_path / "missing"), "--method", "soup"], "does not exist"),
        ([*flag, *e, "--method", "slerp"], "at most 1 other model(s), got 3"),
        ([*flag, *e, "--method", "tie"], "unknown method 'tie' (did you mean ties?)"),
        ([*flag, *e, "--method", "ties", "--set", "densty=0.2"], "unknown parameter 'densty'"),
        ([*flag, *e, "--method", "ties", "--set", "density=1.5"], "out of range"),
        ([*flag, *e, "--method", "dare", "--set", "drop_rate=1.0"], "out of range"),
        ([*flag, *e, "--method", "ties", "--set", "aggregate=median"], "not one of sum, mean, weighted"),
        ([*flag, *e, "--method", "consensus", "--set", "k=4"], "exceeds the 3 experts"),
        ([*flag, str(gemma), "--method", "soup"], "differs from the base"),
        ([*flag, str(renamed), "--method", "soup"], "lacks tensor model.layers.0.mlp.up_proj.weight"),
        ([*flag, str(pickled), "--method", "soup"], "pickle"),
        (["merge", str(tmp_path / "bad.yaml")], "not valid YAML"),
        (["merge", str(tmp_path / "noskip.yaml")], "'skip' must be a list"),
        ([*flag, *e, "--method", "soup", "--dtype", "int4"], "unsupported dtype"),
        ([*flag, *e, "--method", "soup", "--shard-size", "lots"], "invalid size"),
        (["merge", "--method", "soup", "--base", str(base), "--models", *e, "-o", str(exists)], "already exists"),
    ]


def test_bad_input_gives_one_line_and_no_output(family, tmp_path, monkeypatch, capsys):
    for argv, expected in _bad_inputs(family, tmp_path):
        out = tmp_path / "out"
        if "-o" not in argv:
            argv = [*argv, "-o", str(out)]
        code, _, err = run(monkeypatch, capsys, *argv)
        assert code == 1, (argv, err)
        assert err.startswith("error: ") and expected in err, (expected, err)
        assert err.strip().count("\n") == 0 and "Traceback" not in err
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp output left behind"
