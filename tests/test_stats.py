"""Data-driven merging: statistics against direct computations, merges against closed forms."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfmerge.config import DEFAULT_SKIP, MergeConfig, ModelRef
from hfmerge.engine import merge
from hfmerge.errors import HfMergeError
from hfmerge.stats.store import compute_stats
from tests.reference import load_model, merged_names
from tests.tiny import CORPUS

N = 6


@pytest.fixture(scope="session")
def data_files(tmp_path_factory):
    """One small prompt/completion dataset per expert (different slices of the corpus)."""
    root = tmp_path_factory.mktemp("data")
    files = []
    for i in range(3):
        rows = [{"prompt": CORPUS[(i + j) % 5][:20], "completion": CORPUS[(i + j) % 5][20:40]} for j in range(N)]
        path = root / f"d{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(path)
    return files


def examples(folder, data):
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    for line in data.read_text().splitlines():
        row = json.loads(line)
        p = tok(row["prompt"])["input_ids"]
        r = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((torch.tensor(p + r), torch.tensor([-100] * len(p) + r)))
    return out


@pytest.mark.parametrize("variant", ["hard_last", "sft"])
def test_fisher_is_mean_squared_gradient(family, data_files, tmp_path, variant):
    _, experts = family("llama")
    folder = compute_stats("fisher", str(experts[0]), str(data_files[0]), out=tmp_path / "f", samples=N,
                           fisher_variant=variant, progress=False)
    got = load_file(folder / "stats.safetensors")
    model = AutoModelForCausalLM.from_pretrained(experts[0], dtype=torch.float32)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for ids, labels in examples(experts[0], data_files[0]):
        model.zero_grad()
        logits = model(ids[None]).logits[0]
        if variant == "hard_last":
            logp = torch.log_softmax(logits[-1], -1)
            loss = -logp[logp.argmax()]
        else:
            logp = torch.log_softmax(logits[:-1], -1)
            keep = labels[1:] != -100
            loss = -logp[keep].gather(1, labels[1:][keep][:, None]).mean()
        loss.backward()
        for n, p in model.named_parameters():
            expected[n] += p.grad**2 / N
    assert set(got) == set(expected)
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-12)
    assert got["model.layers.0.mlp.up_proj.weight"].abs().sum() > 0


def test_grams_are_xtx_of_linear_inputs(family, data_files, tmp_path):
    _, experts = family("gemma2")
    folder = compute_stats("regmean", str(experts[1]), str(data_files[1]), out=tmp_path / "g", samples=N,
                           progress=False)
    got = load_file(folder / "stats.safetensors")
    model = AutoModelForCausalLM.from_pretrained(experts[1], dtype=torch.float32)
    sums, tokens = {}, 0
    hooks = [m.register_forward_hook(lambda mod, args, out, name=n: sums.__setitem__(
        name, sums.get(name, 0) + args[0][0].T @ args[0][0])) for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for ids, _ in examples(experts[1], data_files[1]):
            model(ids[None])
            tokens += ids.numel()
    for h in hooks:
        h.remove()
    assert set(got) == {f"{n}.weight" for n in sums}
    for n, s in sums.items():
        torch.testing.assert_close(got[f"{n}.weight"], s / tokens, rtol=1e-5, atol=1e-6)


def stats_config(family, data_files, tmp_path, kind, method, params, arch="llama"):
    base, experts = family(arch)
    folders = [compute_stats(kind, str(e), str(d), out=tmp_path / f"s{i}", samples=N, base_ref=str(base),
                             skip=DEFAULT_SKIP, progress=False, epochs=2, lr=0.5)
               for i, (e, d) in enumerate(zip(experts, data_files, strict=True))]
    models = [ModelRef(str(e), stats=str(f)) for e, f in zip(experts, folders, strict=True)]
    return base, experts, folders, MergeConfig(method, str(base), models, params)


@pytest.mark.parametrize("reduction", [0.5, 1.0])
def test_regmean_is_its_closed_form(family, data_files, tmp_path, reduction):
    base, experts, folders, cfg = stats_config(family, data_files, tmp_path, "regmean", "regmean",
                                               {"reduction": reduction})
    cfg.dtype = "float32"  # compare the solve itself, not bf16 rounding
    merge(cfg, tmp_path / "out", progress=False, chunk_numel=256)
    got, b = load_model(tmp_path / "out"), load_model(base)
    thetas = [load_model(e) for e in experts]
    grams = [load_file(f / "stats.safetensors") for f in folders]
    for n in merged_names(b, DEFAULT_SKIP):
        ws = [t[n].double() for t in thetas]
        if n in grams[0]:
            gt = [reduction * g[n].double() + (1 - reduction) * torch.diag(torch.diagonal(g[n].double()))
                  for g in grams]
            expected = torch.linalg.lstsq(sum(gt), sum(g @ w.T for g, w in zip(gt, ws, strict=True))).solution.T
        else:
            expected = sum(ws) / len(ws)
        err = (got[n].double() - expected).abs().max() / expected.abs().max()
        assert err < 1e-4, (n, float(err))


def test_fisher_merge_formula(family, data_files, tmp_path):
    base, experts, folders, cfg = stats_config(family, data_files, tmp_path, "fisher", "fisher", {})
    merge(cfg, tmp_path / "out", progress=False, chunk_numel=300)
    got, thetas = load_model(tmp_path / "out"), [load_model(e) for e in experts]
    fishers = [load_file(f / "stats.safetensors") for f in folders]
    for n in merged_names(load_model(base), DEFAULT_SKIP):
        w = [f[n] + 1e-10 for f in fishers]
        expected = sum(wi * t[n].float() for wi, t in zip(w, thetas, strict=True)) / sum(w)
        torch.testing.assert_close(got[n].float(), expected.to(got[n].dtype).float(), rtol=2**-7, atol=1e-6)


def test_trained_masks_stitch_and_leave_base_alone(family, data_files, tmp_path):
    base, experts = family("llama")
    before = hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    base, experts, folders, cfg = stats_config(family, data_files, tmp_path, "masks", "localize_stitch",
                                               {"variant": "trained", "sparsity": 0.2, "lr": 0.5, "epochs": 2})
    assert hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest() == before
    masks = [load_file(f / "stats.safetensors") for f in folders]
    meta = json.loads((folders[0] / "stats.json").read_text())
    assert 0 < meta["kept_fraction"] < 1 and meta["examples"] == N
    assert all(set(torch.unique(m).tolist()) <= {0, 1} for mk in masks for m in mk.values())
    merge(cfg, tmp_path / "out", progress=False)
    got, b, thetas = load_model(tmp_path / "out"), load_model(base), [load_model(e) for e in experts]
    names = sorted(masks[0])
    for mask, theta in zip(masks, thetas, strict=True):  # training moved the masks off their top-s start
        taus = torch.cat([(theta[n].float() - b[n].float()).abs().flatten() for n in names])
        k = int(meta["sparsity"] * taus.numel())
        start = taus >= torch.sort(taus, descending=True).values[k - 1]
        flipped = (torch.cat([mask[n].bool().flatten() for n in names]) != start).sum().item()
        assert flipped > 0.01 * taus.numel(), flipped
    for n in merged_names(b, DEFAULT_SKIP):
        g = torch.stack([m[n].float() for m in masks])
        taus = torch.stack([t[n].float() - b[n].float() for t in thetas])
        expected = b[n].float() + (g * taus).sum(0) / g.sum(0).clamp(min=1)
        torch.testing.assert_close(got[n].float(), expected.to(got[n].dtype).float(), rtol=2**-7, atol=1e-6)


def test_merge_computes_missing_statistics_once(family, data_files, tmp_path, monkeypatch):
    monkeypatch.setenv("HFMERGE_CACHE", str(tmp_path / "cache"))
    base, experts = family("llama")
    cfg = MergeConfig("fisher", str(base), [ModelRef(str(e), data=str(d)) for e, d in
                                             zip(experts, data_files, strict=True)], {"samples": 3})
    report = merge(cfg, tmp_path / "a", progress=False)
    cached = sorted((tmp_path / "cache" / "stats").iterdir())
    assert len(cached) == 3 and [s["examples"] for s in report["statistics"]] == [3, 3, 3]
    stamps = [(c / "stats.safetensors").stat().st_mtime_ns for c in cached]
    merge(cfg, tmp_path / "b", progress=False)
    assert [(c / "stats.safetensors").stat().st_mtime_ns for c in cached] == stamps
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    cfg.models[0].data = None
    with pytest.raises(HfMergeError, match="needs data for expert"):
        merge(cfg, tmp_path / "c", progress=False)
