"""LoRA adapters as experts: materialised tensor by tensor, equal to peft's own merge_and_unload."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from hfmerge.config import MergeConfig, ModelRef
from hfmerge.engine import merge
from hfmerge.errors import HfMergeError
from tests.reference import load_model


def make_adapter(base_dir, out_dir, seed: int, rslora: bool = False) -> dict[str, torch.Tensor]:
    """Save a random LoRA adapter of ``base_dir``; return peft's merged fp32 state dict."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False,
                     use_rslora=rslora)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(out_dir)
    return {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_expert_equals_peft_merge(family, tmp_path, rslora):
    base, experts = family("llama")
    merged = make_adapter(base, tmp_path / "adapter", seed=1, rslora=rslora)
    # the soup of a single expert is that expert: the materialised LoRA weights themselves
    cfg = MergeConfig("soup", str(base), [ModelRef(str(tmp_path / "adapter"))], dtype="float32", skip=[])
    report = merge(cfg, tmp_path / "out", progress=False)
    got = load_model(tmp_path / "out")
    for name, t in got.items():
        torch.testing.assert_close(t, merged[name], rtol=1e-6, atol=1e-6)
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"],
                           load_model(base)["model.layers.0.self_attn.q_proj.weight"].float())
    adapter_bytes = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert report["sources"][1]["weight_bytes"] < adapter_bytes


def test_lora_and_full_experts_mix(family, tmp_path):
    base, experts = family("llama")
    merged = make_adapter(base, tmp_path / "adapter", seed=2)
    cfg = MergeConfig("task_arithmetic", str(base), [ModelRef(str(tmp_path / "adapter")), ModelRef(str(experts[0]))],
                      {"scaling": 0.5}, dtype="float32")
    merge(cfg, tmp_path / "out", progress=False)
    got, b, e = load_model(tmp_path / "out"), load_model(base), load_model(experts[0])
    name = "model.layers.1.mlp.down_proj.weight"
    expected = b[name].float() + 0.5 * ((merged[name] - b[name].float()) + (e[name].float() - b[name].float()))
    torch.testing.assert_close(got[name], expected, rtol=1e-5, atol=1e-6)


def test_adapter_of_another_model_is_refused(family, tmp_path):
    base, _ = family("llama")
    gemma, _ = family("gemma2")
    make_adapter(gemma, tmp_path / "adapter", seed=3)
    cfg = MergeConfig("soup", str(base), [ModelRef(str(tmp_path / "adapter"))])
    with pytest.raises(HfMergeError, match="another model"):
        merge(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["int8", "rank"])
def test_int_or_mismatched_lora_matrices_are_refused(family, tmp_path, bad):
    """An adapter whose A/B are int8 (quantized) or whose ranks disagree is one line, never merged as floats."""
    from safetensors.torch import load_file, save_file

    base, _ = family("llama")
    make_adapter(base, tmp_path / "adapter", seed=4)
    path = tmp_path / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    a = tensors[key]
    tensors[key] = a.to(torch.int8) if bad == "int8" else a[:-1].contiguous()
    save_file(tensors, path)
    cfg = MergeConfig("soup", str(base), [ModelRef(str(tmp_path / "adapter"))])
    with pytest.raises(HfMergeError, match="not a float matrix" if bad == "int8" else "do not fit") as err:
        merge(cfg, tmp_path / "out", progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
