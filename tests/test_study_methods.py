"""TSV-Merge, Iso-C and Subspace Boosting (on TA and TIES), merged by the engine, against independent whole-tensor
float64 references (numpy) on experts whose task vectors have clear spectral gaps; the whole-tensor hook."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hfmerge.config import MergeConfig, ModelRef
from hfmerge.errors import HfMergeError
from hfmerge.job import merge, merge_state_dict
from hfmerge.methods import registry
from hfmerge.methods.base import Chunk, Method
from hfmerge.methods.tsv_m import METHOD as TSV
from tests.reference import load_model, reference_merge
from tests.tiny import make_family

N_EXPERTS = 3


def is_matrix(name: str, t: torch.Tensor) -> bool:
    return t.dim() == 2 and "embed" not in name and "lm_head" not in name


@pytest.fixture(scope="module")
def gapped(tmp_path_factory):
    """A tiny fp32 Llama base and experts whose matrices' τᵢ = Qᵢ diag(s) Pᵢᵀ have geometric spectra (ratio 0.8,
    a 20% gap between every two singular values) in random subspaces; other tensors get small noise."""
    root = tmp_path_factory.mktemp("gapped")
    base_dir, _ = make_family(root, n_experts=0, dtype=torch.float32)
    base = load_model(base_dir)
    gen = torch.Generator().manual_seed(11)
    experts = []
    for i in range(N_EXPERTS):
        sd = {}
        for name, t in base.items():
            if is_matrix(name, t):
                rows, cols = t.shape
                r = min(rows, cols)
                q = torch.linalg.qr(torch.randn(rows, r, generator=gen, dtype=torch.float64))[0]
                p = torch.linalg.qr(torch.randn(cols, r, generator=gen, dtype=torch.float64))[0]
                s = 0.3 * (1 + 0.25 * i) * 0.8 ** torch.arange(r, dtype=torch.float64)
                sd[name] = (t.double() + (q * s) @ p.T).float()
            elif "embed" in name or "lm_head" in name:
                sd[name] = t.clone()
            else:
                sd[name] = t + 0.01 * torch.randn(t.shape, generator=gen)
        folder = root / f"expert{i + 1}"
        shutil.copytree(base_dir, folder)
        for f in folder.glob("*.safetensors"):
            f.unlink()
        save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})
        experts.append(folder)
    return base_dir, experts


def np_svd(a: np.ndarray):
    return np.linalg.svd(a, full_matrices=False)


def ref_tsv(taus: list[np.ndarray]) -> np.ndarray:
    """The paper's code: zero-padded rows×r U, r×cols V with each task's top-k in its own slot, polar factors."""
    n = len(taus)
    rows, cols = taus[0].shape
    r = min(rows, cols)
    k = r // n
    u_all, s_all, v_all = np.zeros((rows, r)), np.zeros(r), np.zeros((r, cols))
    for i, t in enumerate(taus):
        u, s, vt = np_svd(t)
        u_all[:, i * k:(i + 1) * k], s_all[i * k:(i + 1) * k], v_all[i * k:(i + 1) * k] = u[:, :k], s[:k], vt[:k]
    pu, _, qu = np_svd(u_all)
    pv, _, qv = np_svd(v_all)
    return (pu @ qu) @ np.diag(s_all) @ (pv @ qv)


def ref_iso(taus: list[np.ndarray]) -> np.ndarray:
    u, s, vt = np_svd(sum(taus))
    return s.mean() * u @ vt


def ref_boost(d: np.ndarray, beta: float) -> np.ndarray:
    u, s, vt = np_svd(d)
    mass = np.cumsum(s) / s.sum()
    j = int(np.argmax(mass >= beta))
    assert np.abs(mass - beta).min() > 1e-4, "cut too close to β for a meaningful fp32 comparison"
    return u @ np.diag(np.maximum(s, s[j])) @ vt


def reference(method: str, base: dict, experts: list[dict], params: dict, base_dir=None, expert_dirs=None) -> dict:
    lam = params.get("scaling", 1.0)
    beta = params.get("subspace_boost")
    ties = reference_merge("ties", base_dir, expert_dirs, {**params, "scaling": 1.0}, ["*embed_tokens*", "*lm_head*"]) \
        if method == "ties" else None
    out = {}
    for name, t in base.items():
        b = t.double().numpy()
        if "embed" in name or "lm_head" in name:
            out[name] = b
            continue
        taus = [e[name].double().numpy() - b for e in experts]
        if method == "task_arithmetic":
            d = sum(taus)
        elif method == "ties":
            d = ties[name].double().numpy() - b
        elif not is_matrix(name, t):
            d = sum(taus) / len(taus)
        else:
            d = ref_tsv(taus) if method == "tsv_m" else ref_iso(taus)
        if beta is not None and beta < 1 and is_matrix(name, t):
            d = ref_boost(d, beta)
        out[name] = b + lam * d
    return out


def rel_err(got: torch.Tensor, base: torch.Tensor, ref: np.ndarray) -> float:
    """Relative Frobenius error of the merged task vector θ − θ₀ (stricter than of θ)."""
    d_ref = ref - base.double().numpy()
    return float(np.linalg.norm((got.double() - base.double()).numpy() - d_ref) / max(np.linalg.norm(d_ref), 1e-30))


CASES = [
    ("tsv_m", {}),
    ("tsv_m", {"scaling": 0.6}),
    ("iso_c", {"scaling": 0.7}),
    ("task_arithmetic", {"scaling": 0.5, "subspace_boost": 0.2}),
    ("ties", {"density": 0.1, "aggregate": "mean", "topk_scope": "tensor", "subspace_boost": 0.2}),
]


@pytest.mark.parametrize(("method", "params"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_method_matches_float64_reference(gapped, method, params):
    base_dir, expert_dirs = gapped
    config = MergeConfig(method, str(base_dir), [ModelRef(str(e)) for e in expert_dirs], dict(params))
    got = merge_state_dict(config, chunk_numel=256)  # matrices gathered from several row chunks
    base, experts = load_model(base_dir), [load_model(e) for e in expert_dirs]
    ref = reference(method, base, experts, params, base_dir, expert_dirs)
    assert set(got) == set(base)
    worst = max((rel_err(got[n], base[n], ref[n]), n) for n in base if "embed" not in n and "lm_head" not in n)
    assert worst[0] < 1e-4, worst
    assert torch.equal(got["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_report_lists_the_tensors_each_rule_changed(gapped, tmp_path):
    base_dir, expert_dirs = gapped
    base = load_model(base_dir)
    matrices = sorted(n for n, t in base.items() if is_matrix(n, t))
    for method, params, rule in [("iso_c", {}, "iso_c"), ("ties", {"subspace_boost": 0.3}, "subspace_boost")]:
        out = tmp_path / method
        merge(MergeConfig(method, str(base_dir), [ModelRef(str(e)) for e in expert_dirs], params), out,
              progress=False)
        report = json.loads((out / "merge_report.json").read_text())
        assert sorted(report["spectral_rules"][rule]) == matrices
        assert report["parameters"].get("subspace_boost") == params.get("subspace_boost")
    out = tmp_path / "plain"
    merge(MergeConfig("task_arithmetic", str(base_dir), [ModelRef(str(expert_dirs[0]))]), out, progress=False)
    assert "spectral_rules" not in json.loads((out / "merge_report.json").read_text())


def test_single_expert_and_beta_one(gapped):
    """N = 1: TSV-M keeps the whole spectrum (θ₁ back); Iso-C flattens it; β = 1 leaves TA unchanged."""
    base_dir, expert_dirs = gapped
    one = [ModelRef(str(expert_dirs[1]))]
    base, expert = load_model(base_dir), load_model(expert_dirs[1])
    tsv = merge_state_dict(MergeConfig("tsv_m", str(base_dir), one))
    iso = merge_state_dict(MergeConfig("iso_c", str(base_dir), one))
    ref = reference("iso_c", base, [expert], {})
    for n, t in base.items():
        if "embed" in n:
            continue
        assert rel_err(tsv[n], t, expert[n].double().numpy()) < 1e-4, n
        assert rel_err(iso[n], t, ref[n]) < 1e-4, n
    models = [ModelRef(str(e)) for e in expert_dirs]
    plain = merge_state_dict(MergeConfig("task_arithmetic", str(base_dir), models, {"scaling": 0.5}))
    noop = merge_state_dict(MergeConfig("task_arithmetic", str(base_dir), models,
                                        {"scaling": 0.5, "subspace_boost": 1.0}))
    assert all(torch.equal(plain[n], noop[n]) for n in plain)


def test_pure_whole_tensor_form_equals_the_engine(gapped):
    """``merge`` on one whole-tensor chunk (the pure form) equals the engine's bounded-memory Spectral path."""
    base_dir, expert_dirs = gapped
    base, experts = load_model(base_dir), [load_model(e) for e in expert_dirs]
    name = "model.layers.1.mlp.down_proj.weight"
    for method, params in [("tsv_m", {"scaling": 0.6}), ("iso_c", {}), ("task_arithmetic", {"subspace_boost": 0.2}),
                           ("ties", {"topk_scope": "tensor", "aggregate": "mean", "subspace_boost": 0.2})]:
        spec = registry.get_method(method)
        engine = merge_state_dict(MergeConfig(method, str(base_dir), [ModelRef(str(e)) for e in expert_dirs],
                                              params), chunk_numel=256)[name]
        chunk = Chunk(name, 0, base[name].clone(), torch.stack([e[name] for e in experts]), [1.0] * N_EXPERTS)
        if method == "ties":
            from hfmerge.methods.selection import kth_smallest, rank_for_density

            taus = chunk.experts - chunk.base
            chunk.thresholds["trim"] = torch.tensor([kth_smallest(t.abs(), rank_for_density(t.numel(), 0.2))
                                                     for t in taus])
        pure = spec.merge(chunk, spec.resolve(params))
        assert rel_err(pure, base[name], engine.double().numpy()) < 1e-5, method


def test_refusals():
    chunk = Chunk("model.layers.0.mlp.up_proj.weight", 0, torch.zeros(2, 5), torch.randn(3, 2, 5), [1.0] * 3)
    with pytest.raises(HfMergeError, match=r"up_proj.*k = ⌊r/N⌋ would be 0"):
        TSV.merge(chunk, TSV.resolve({}))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(HfMergeError, match="subspace_boost"):
            registry.get_method("ties").resolve({"subspace_boost": bad})
    assert registry.get_method("task_arithmetic").resolve({})["subspace_boost"] is None


def test_whole_tensor_hook(gapped, monkeypatch):
    """A method declaring ``whole`` sees every merged tensor as one fp32 chunk at offset 0, however small the
    engine's chunks; the others see row chunks."""
    base_dir, expert_dirs = gapped
    seen: list[tuple[str, int, tuple, torch.dtype]] = []

    def record(chunk: Chunk, params: dict) -> torch.Tensor:
        seen.append((chunk.name, chunk.offset, tuple(chunk.experts.shape), chunk.experts.dtype))
        return chunk.base.clone()

    base = load_model(base_dir)
    models = [ModelRef(str(e)) for e in expert_dirs]
    for whole in (True, False):
        seen.clear()
        monkeypatch.setitem(registry.METHODS, "probe", Method("probe", "", "", "", {}, record,
                                                              whole=lambda p, w=whole: w))
        merge_state_dict(MergeConfig("probe", str(base_dir), models), chunk_numel=64)
        merged = [n for n in base if "embed" not in n and "lm_head" not in n]
        if whole:
            assert sorted(s[0] for s in seen) == sorted(merged)
            assert all(off == 0 and shape == (N_EXPERTS, *base[n].shape) and dt == torch.float32
                       for n, off, shape, dt in seen)
        else:
            assert len(seen) > len(merged) and any(off > 0 for _, off, _, _ in seen)


def test_spectral_rules_read_one_expert_or_row_chunks(gapped, monkeypatch):
    """Memory independent of N: TSV-M's rule sees one expert's whole τᵢ at a time; Iso-C's sees row chunks."""
    from hfmerge.methods import iso_c, tsv_m
    from hfmerge.methods.base import Spectral

    base_dir, expert_dirs = gapped
    models = [ModelRef(str(e)) for e in expert_dirs]
    seen: list[tuple] = []

    def expert(name, tau, i, n, params):
        seen.append(("expert", name, tuple(tau.shape), i, n))
        return tsv_m.top_triplets(name, tau, i, n, params)

    def rows(chunk, params):
        seen.append(("rows", chunk.name, tuple(chunk.experts.shape)))
        return iso_c.summed(chunk, params)

    monkeypatch.setattr(tsv_m, "SPECTRAL", Spectral("tsv_m", tsv_m.SPECTRAL.applies, tsv_m.combine, expert=expert))
    monkeypatch.setattr(iso_c, "SPECTRAL", Spectral("iso_c", iso_c.SPECTRAL.applies, iso_c.isotropic, rows=rows))
    merge_state_dict(MergeConfig("tsv_m", str(base_dir), models))
    merge_state_dict(MergeConfig("iso_c", str(base_dir), models), chunk_numel=256)
    base = load_model(base_dir)
    matrices = [n for n, t in base.items() if is_matrix(n, t)]
    tsv = [s for s in seen if s[0] == "expert"]
    assert sorted(tsv) == sorted(("expert", n, tuple(base[n].shape), i, N_EXPERTS)
                                 for n in matrices for i in range(N_EXPERTS))
    iso = [s for s in seen if s[0] == "rows"]
    assert {s[1] for s in iso} == set(matrices)
    assert all(s[2][0] == N_EXPERTS and s[2][1] * s[2][2] <= 256 for s in iso)
    assert len(iso) > len(matrices)  # several row chunks per matrix
