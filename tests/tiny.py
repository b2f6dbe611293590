"""Tiny real checkpoints built with transformers, for tests (and shared by every test module)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "two plus three equals five and six times seven is forty two",
    "def add(a, b): return a + b",
    "bonjour le monde, hola mundo, hallo welt",
    "I cannot help with that request, but here is a safe alternative",
] * 20


def make_tokenizer(folder: Path, vocab_size: int = 96) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def tiny_config(arch: str, tied: bool, vocab_size: int = 320):
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied, bos_token_id=1,
                  eos_token_id=2, pad_token_id=3, max_position_embeddings=128)
    if arch == "llama":
        return LlamaForCausalLM, LlamaConfig(**common)
    if arch == "gemma2":
        return Gemma2ForCausalLM, Gemma2Config(head_dim=8, sliding_window=16, **common)
    raise ValueError(arch)


def make_family(root: Path, arch: str = "llama", tied: bool = False, n_experts: int = 3,
                dtype: torch.dtype = torch.bfloat16, seed: int = 0, shard: str | None = None,
                vocab_size: int = 320) -> tuple[Path, list[Path]]:
    """A base and ``n_experts`` 'fine-tunes' (base + sparse-ish structured noise), saved with tokenizer."""
    torch.manual_seed(seed)
    cls, cfg = tiny_config(arch, tied, vocab_size)
    base = cls(cfg).to(dtype)
    paths = []
    for i in range(n_experts + 1):
        model = cls(cfg).to(dtype)
        model.load_state_dict(base.state_dict())
        if i:
            with torch.no_grad():
                for p in model.parameters():
                    noise = torch.randn_like(p, dtype=torch.float32) * 0.02
                    noise *= torch.rand_like(noise) < 0.5  # experts touch overlapping subsets
                    p.add_(noise.to(dtype))
        folder = root / ("base" if i == 0 else f"expert{i}")
        model.save_pretrained(folder, max_shard_size=shard or "5GB")
        make_tokenizer(folder)
        paths.append(folder)
    return paths[0], paths[1:]


def publish(api, folders: list[Path], prefix: str) -> list[str]:
    """Upload a family (base first) to the Hub as ``{prefix}-base``, ``{prefix}-expert1``, …; returns the repo ids."""
    ids = []
    for i, folder in enumerate(folders):
        repo = f"{prefix}-{'base' if i == 0 else f'expert{i}'}"
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo)
        ids.append(repo)
    return ids


def write_eval_data(root: Path, seed: int, n_mcq: int) -> Path:
    """The data of tests/eval_tasks.py under ``root``: a multiple-choice task (mcq) and a generative one (gen)."""
    import json
    import random

    rng = random.Random(seed)
    words = ["fox", "dog", "three", "five", "monde", "hola", "return", "safe"]
    mcq = [{"question": f"the quick brown {rng.choice(words)} jumps over the", "choices": rng.sample(words, 3),
            "answer": rng.randrange(3)} for _ in range(n_mcq)]
    gen = [{"prompt": f"two plus {w} equals", "target": f" {rng.choice(words)}"} for w in words]
    for name, rows in (("mcq", mcq), ("gen", gen)):
        (root / name).mkdir()
        (root / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
