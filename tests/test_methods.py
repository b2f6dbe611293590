"""Every method, merged by the streaming engine, against the independent whole-model reference."""

from __future__ import annotations

import pytest
import torch

from hfmerge.config import DEFAULT_SKIP, MergeConfig, ModelRef
from hfmerge.engine import merge
from hfmerge.methods.selection import RadixSelect, high_bits, kth_smallest, rank_for_density
from tests.reference import load_model, reference_merge

CASES = [
    ("soup", {}),
    ("task_arithmetic", {"scaling": 0.4}),
    ("ties", {"density": 0.3, "scaling": 0.4, "aggregate": "sum", "topk_scope": "global"}),
    ("ties", {"density": 0.3, "scaling": 1.0, "aggregate": "mean", "topk_scope": "tensor"}),
    ("dare", {"drop_rate": 0.7, "scaling": 0.5}),
    ("consensus", {"mask_lambda": 0.4, "k": 2, "scaling": 0.8}),
    ("localize_stitch", {"sparsity": 0.2}),
]


def assert_matches(out_dir, ref: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> None:
    got = load_model(out_dir)
    assert set(got) == set(base)
    for name, t in got.items():
        assert t.dtype == base[name].dtype, name
        expected = ref[name].to(t.dtype)
        diff = (t.float() - expected.float()).abs()
        # summation order may move a value by one bf16 rounding step, no more
        ulp = expected.float().abs().clamp(min=1e-6) * 2**-7
        assert bool((diff <= ulp).all()), f"{name}: max diff {diff.max():.3g}"
        assert (diff == 0).float().mean() > 0.99, name


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
@pytest.mark.parametrize(("method", "params"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_method_matches_reference(family, tmp_path, arch, method, params):
    base, experts = family(arch)
    config = MergeConfig(method, str(base), [ModelRef(str(e)) for e in experts], dict(params), seed=7)
    merge(config, tmp_path / "out", progress=False, chunk_numel=512)  # many chunks per tensor
    ref = reference_merge(method, base, experts, params, DEFAULT_SKIP, seed=7)
    assert_matches(tmp_path / "out", ref, load_model(base))


def test_weights_and_merged_embeddings(family, tmp_path):
    """Weighted task arithmetic with skip: [] merges embeddings (tied Llama, sharded input)."""
    base, experts = family("llama_tied")
    models = [ModelRef(str(e), w) for e, w in zip(experts, [0.5, 1.5, -0.25], strict=True)]
    config = MergeConfig("task_arithmetic", str(base), models, {"scaling": 0.7}, skip=[])
    merge(config, tmp_path / "out", progress=False)
    ref = reference_merge("task_arithmetic", base, experts, {"scaling": 0.7}, [], weights=[0.5, 1.5, -0.25])
    base_t = load_model(base)
    assert_matches(tmp_path / "out", ref, base_t)
    assert not torch.equal(load_model(tmp_path / "out")["model.embed_tokens.weight"],
                           base_t["model.embed_tokens.weight"])


def test_skipped_tensors_are_the_base_bytes(family, tmp_path):
    base, experts = family("llama")
    merge(MergeConfig("soup", str(base), [ModelRef(str(e)) for e in experts]), tmp_path / "o", progress=False)
    got, b = load_model(tmp_path / "o"), load_model(base)
    assert torch.equal(got["model.embed_tokens.weight"], b["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], b["lm_head.weight"])
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], b["model.layers.0.mlp.up_proj.weight"])


def test_dare_is_deterministic_whatever_the_chunking(family, tmp_path):
    base, experts = family("llama")
    cfg = MergeConfig("dare", str(base), [ModelRef(str(e)) for e in experts], {"drop_rate": 0.9}, seed=3)
    merge(cfg, tmp_path / "a", progress=False, chunk_numel=100)
    torch.set_num_threads(1)
    try:
        merge(cfg, tmp_path / "b", progress=False)
    finally:
        torch.set_num_threads(2)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()
    cfg.seed = 4
    merge(cfg, tmp_path / "c", progress=False)
    assert a != (tmp_path / "c" / "model.safetensors").read_bytes()
    # about p of the task-vector entries are dropped
    got, b = load_model(tmp_path / "a"), load_model(base)
    name = "model.layers.1.mlp.down_proj.weight"
    ref = reference_merge("dare", base, experts, {"drop_rate": 0.9, "scaling": 1.0}, DEFAULT_SKIP, seed=3)
    assert torch.equal(got[name], ref[name].to(got[name].dtype))
    assert 0.6 < float((got[name] == b[name]).float().mean()) < 0.95


@pytest.mark.parametrize("guess", [None, "right", "wrong"])
@pytest.mark.parametrize("density", [1e-4, 0.1, 0.5, 0.999, 1.0])
def test_radix_select_is_exact(density, guess):
    torch.manual_seed(0)
    values = torch.cat([torch.randn(50_000).abs(), torch.zeros(3_000), torch.full((2_000,), 0.5)])
    values = values[torch.randperm(values.numel())]
    k = rank_for_density(values.numel(), density)
    exact = kth_smallest(values, k)
    sel = RadixSelect({None: None, "right": high_bits(exact) + 3, "wrong": high_bits(exact) + 40}[guess])
    parts = values.split(7_777)
    for part in parts:
        sel.feed_high(part)
    second = sel.choose_bucket(k)
    assert second == (k > 0 and guess != "right")
    if second:
        for part in parts:
            sel.feed_low(part)
    assert sel.value() == exact


@pytest.mark.parametrize("n", [1000, 300_000, 2_000_003])
def test_kth_smallest_matches_kthvalue(n):
    torch.manual_seed(n)
    values = torch.randn(n).abs()
    values[: n // 3] = 0.0  # many exact ties, as in bf16 task vectors
    values[n // 3: n // 2] = values[n // 3: n // 2].sort().values  # structured stretches for the strided sample
    for density in (1e-5, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        k = rank_for_density(n, density)
        expected = 0.0 if k == 0 else float(values.kthvalue(k).values)
        assert kth_smallest(values, k) == expected
