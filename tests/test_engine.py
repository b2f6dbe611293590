"""The merged folder: loads and generates, is reproducible, shards, reports, and keeps inputs safe."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from hfmerge.config import MergeConfig, ModelRef
from hfmerge.engine import merge
from hfmerge.errors import HfMergeError
from tests.reference import load_model
from tests.tiny import make_family


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", ["llama", "llama_tied", "gemma2"])
def test_output_loads_and_generates(family, tmp_path, arch):
    base, experts = family(arch)
    cfg = MergeConfig("ties", str(base), [ModelRef(str(e)) for e in experts], {"density": 0.5})
    report = merge(cfg, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert {"config.json", "generation_config.json", "tokenizer.json", "hfmerge.yaml", "merge_report.json",
            "README.md"} <= {p.name for p in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    ids = tok("two plus three", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 5
    # the loaded weights are the merged file's, tied or not
    state = load_model(out)
    assert torch.equal(model.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                       state["model.layers.0.self_attn.q_proj.weight"])
    assert report["tensors_merged"] > 0 and report["peak_rss_bytes"] > 0
    assert report["bytes_written"] == sum(p.stat().st_size for p in out.glob("*.safetensors")) - sum(
        8 + int.from_bytes(p.read_bytes()[:8], "little") for p in out.glob("*.safetensors"))


def test_rerun_is_byte_identical_and_sharded(family, tmp_path):
    base, experts = family("llama_tied")  # sharded input with an index
    cfg = MergeConfig("dare", str(base), [ModelRef(str(e)) for e in experts], {"drop_rate": 0.5}, seed=1)
    merge(cfg, tmp_path / "a", shard_size="30KB", progress=False)
    merge(cfg, tmp_path / "b", shard_size="30KB", progress=False, chunk_numel=333)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files:
        if name not in ("merge_report.json", "README.md"):  # these two hold timings
            assert sha(tmp_path / "a" / name) == sha(tmp_path / "b" / name), name
    shards = sorted((tmp_path / "a").glob("model-*.safetensors"))
    assert len(shards) > 1
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    for name, file in index["weight_map"].items():
        with safe_open(tmp_path / "a" / file, "pt") as f:
            assert name in f.keys()
    total = 0
    for shard in shards:
        with safe_open(shard, "pt") as f:
            total += sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert index["metadata"]["total_size"] == total
    resolved = yaml.safe_load((tmp_path / "a" / "hfmerge.yaml").read_text())
    assert resolved["parameters"] == {"drop_rate": 0.5, "scaling": 1.0}
    assert resolved["seed"] == 1 and resolved["method"] == "dare"
    AutoModelForCausalLM.from_pretrained(tmp_path / "a")


def test_output_dtype_and_report(family, tmp_path):
    base, experts = family("llama")
    cfg = MergeConfig("soup", str(base), [ModelRef(str(e)) for e in experts], dtype="float32")
    report = merge(cfg, tmp_path / "out", progress=False)
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float32"
    saved = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert saved["method"] == "soup" and saved["torch_version"] == torch.__version__
    assert [s["role"] for s in saved["sources"]] == ["base", "expert", "expert", "expert"]
    in_bytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    assert saved["bytes_read"] >= report["tensors_merged"] and saved["bytes_read"] < 5 * in_bytes


def test_mergekit_yaml_is_translated(family, tmp_path):
    base, experts = family("llama")
    mk = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [{"model": str(base)}] + [
            {"model": str(e), "parameters": {"density": 0.4, "weight": 1.0}} for e in experts],
        "parameters": {"normalize": True, "int8_mask": True},
        "dtype": "bfloat16",
    }
    (tmp_path / "mk.yaml").write_text(yaml.safe_dump(mk))
    cfg = MergeConfig.from_file(tmp_path / "mk.yaml")
    assert cfg.method == "ties" and len(cfg.models) == 3 and cfg.skip == []  # a mergekit config merges every tensor
    assert cfg.parameters == {"density": 1.0, "topk_scope": "tensor", "aggregate": "weighted"}
    assert cfg.per_tensor["models"] == [{"weight": 1.0, "density": 0.4}] * 3
    assert cfg.mergekit_config == (tmp_path / "mk.yaml").read_text()
    dare = MergeConfig.from_dict(dict(mk, merge_method="dare_linear", parameters={}))
    assert dare.method == "dare_linear" and dare.per_tensor["models"][0]["density"] == 0.4
    with pytest.raises(HfMergeError, match="needs a base_model"):  # more in tests/test_mergekit.py
        MergeConfig.from_dict({k: v for k, v in mk.items() if k != "base_model"})


def test_padded_vocab_expert(tmp_path):
    """MergeBench's math expert has a padded vocabulary: fine by default, refused when merging embeddings."""
    base, _ = make_family(tmp_path / "a", n_experts=0)
    _, (padded,) = make_family(tmp_path / "b", n_experts=1, vocab_size=336)
    cfg = MergeConfig("task_arithmetic", str(base), [ModelRef(str(padded))])
    merge(cfg, tmp_path / "ok", progress=False)
    cfg.skip = []
    with pytest.raises(HfMergeError, match="vocab sizes differ"):
        merge(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_failed_merge_leaves_existing_output_untouched(family, tmp_path):
    base, experts = family("llama")
    out = tmp_path / "out"
    cfg = MergeConfig("soup", str(base), [ModelRef(str(e)) for e in experts])
    merge(cfg, out, progress=False)
    before = sha(out / "model.safetensors")
    broken = tmp_path / "broken"
    shutil.copytree(experts[0], broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:-100])
    cfg.models.append(ModelRef(str(broken)))
    with pytest.raises(HfMergeError, match="truncated"):
        merge(cfg, out, overwrite=True, progress=False)
    assert sha(out / "model.safetensors") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out"]  # no temp folder left
