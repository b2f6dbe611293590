"""Peak memory of hfmerge on a base + N experts of a synthetic Llama-shaped checkpoint (bf16).

    .venv/bin/python benchmarks/memory.py --size 1b --experts 2   # every data-free method
    .venv/bin/python benchmarks/memory.py --size 1b --stats fisher regmean   # statistics of one model

Each run is a subprocess; its peak RSS is read from the OS (wait4 rusage) and compared with the bytes of
one input checkpoint."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

WORK = Path(__file__).parent / "_work"
DATA_FREE = ["soup", "task_arithmetic", "ties", "dare", "consensus", "localize_stitch"]
SIZES = {  # Llama shapes: hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (256, 1024, 4, 8, 4, 32000),
    "0.5b": (1024, 4096, 24, 16, 4, 128256),
    "1b": (2048, 8192, 16, 32, 8, 128256),
}


def config(size: str) -> dict:
    h, i, n, heads, kv, v = SIZES[size]
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": i,
            "num_hidden_layers": n, "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": v,
            "head_dim": h // heads, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096, "dtype": "bfloat16",
            "tie_word_embeddings": True, "rope_theta": 500000.0, "bos_token_id": 0, "eos_token_id": 1}


def shapes(cfg: dict):
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kvd = cfg["num_key_value_heads"] * cfg["head_dim"]
    yield "model.embed_tokens.weight", (v, h)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        yield p + "input_layernorm.weight", (h,)
        for name, shape in [("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (kvd, h)),
                            ("self_attn.v_proj", (kvd, h)), ("self_attn.o_proj", (h, h)),
                            ("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)), ("mlp.down_proj", (h, i))]:
            yield p + name + ".weight", shape
        yield p + "post_attention_layernorm.weight", (h,)
    yield "model.norm.weight", (h,)


def make_family(size: str, experts: int) -> tuple[Path, list[Path]]:
    """Base + experts (base + small noise), cached in benchmarks/_work. Built in a child process, so this
    process stays small (a forked child's peak RSS would otherwise count the parent's pages)."""
    root = WORK / f"llama-{size}"
    folders = [root / "base"] + [root / f"expert{i}" for i in range(1, experts + 1)]
    if not all((f / "model.safetensors").exists() for f in folders):
        subprocess.run([sys.executable, __file__, "--size", size, "--experts", str(experts), "--generate"], check=True)
    return folders[0], folders[1:]


def generate(size: str, experts: int) -> None:
    import torch
    from safetensors.torch import save_file

    cfg = config(size)
    root = WORK / f"llama-{size}"
    folders = [root / "base"] + [root / f"expert{i}" for i in range(1, experts + 1)]
    gen = torch.Generator().manual_seed(0)
    for k, folder in enumerate(folders):
        if (folder / "model.safetensors").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for name, shape in shapes(cfg):
            gen.manual_seed(zlib.crc32(name.encode()))
            t = torch.randn(shape, generator=gen) * 0.02
            if k:
                gen.manual_seed(k * 1000 + zlib.crc32(name.encode()) % 997)
                t += torch.randn(shape, generator=gen) * 0.002
            state[name] = t.to(torch.bfloat16)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(cfg))
        del state


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of a subprocess. The previous run's output is flushed to disk first
    (``sync``), so its writeback is not timed as part of this run."""
    os.sync()
    time.sleep(1.0)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1b", choices=SIZES)
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=DATA_FREE)
    ap.add_argument("--stats", nargs="*", help="measure `hfmerge stats` of the base instead (fisher, regmean)")
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate:
        return generate(args.size, args.experts)
    if args.stats:
        return stats_memory(args.size, args.stats)
    base, experts = make_family(args.size, args.experts)
    ckpt = (base / "model.safetensors").stat().st_size
    hfmerge = str(Path(sys.executable).parent / "hfmerge")
    rows = []
    for method in args.methods:
        out = WORK / f"out-{method}"
        secs, rss = run([hfmerge, "merge", "--method", method, "--base", str(base), "--models", *map(str, experts),
                         "-o", str(out), "--overwrite", "-q"])
        rows.append({"method": method, "seconds": round(secs, 1), "peak_rss_gib": round(rss / 2**30, 2),
                     "rss_over_checkpoint": round(rss / ckpt, 3)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"size": args.size, "experts": args.experts, "checkpoint_gib": round(ckpt / 2**30, 2), "rows": rows}
    (Path(__file__).parent / f"memory-{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")


def stats_memory(size: str, kinds: list[str], samples: int = 8) -> None:
    """Peak RSS of `hfmerge stats` on the base vs one fp32 model + its statistics."""
    base, _ = make_family(size, 0)
    if not (base / "tokenizer.json").exists():  # a small BPE tokenizer is enough to feed token ids
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); from pathlib import Path; "
                        f"from tests.tiny import make_tokenizer; make_tokenizer(Path('{base}'))"], check=True,
                       cwd=Path(__file__).parent.parent)
    words = "the quick brown fox jumps over the lazy dog two plus three equals five bonjour le monde".split()
    data = WORK / "stats-data.jsonl"
    data.write_text("".join(json.dumps({"prompt": " ".join(words[i:] + words[:i]) * 2, "completion": words[i]})
                            + "\n" for i in range(samples)))
    params = sum(math.prod(s) for _, s in shapes(config(size)))
    hfmerge = str(Path(sys.executable).parent / "hfmerge")
    rows = []
    for kind in kinds:
        out = WORK / f"stats-{kind}"
        secs, rss = run([hfmerge, "stats", kind, str(base), "--data", str(data), "--samples", str(samples),
                         "-o", str(out), "-q"])
        stats_bytes = (out / "stats.safetensors").stat().st_size
        budget = params * 4 + stats_bytes  # the fp32 model + its statistics
        rows.append({"kind": kind, "seconds": round(secs, 1), "peak_rss_gib": round(rss / 2**30, 2),
                     "model_plus_stats_gib": round(budget / 2**30, 2), "ratio": round(rss / budget, 3)})
        print(json.dumps(rows[-1]), flush=True)
    (Path(__file__).parent / f"stats-memory-{size}.json").write_text(json.dumps(
        {"size": size, "params": params, "samples": samples, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
