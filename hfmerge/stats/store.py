"""Compute, save and cache statistics: ``stats.safetensors`` keyed by tensor name + ``stats.json`` sidecar.

The cache key is the model's identity (Hub commit sha, or the sizes and mtimes of a local folder's
weight files), the data's identity, and every setting, so a re-trained expert or changed data never
reuses stale statistics."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from hfmerge.errors import HfMergeError
from hfmerge.sources import Checkpoint, LocalReader
from hfmerge.suggest import require

KINDS = ("fisher", "regmean", "masks")
STATS_FILE = "stats.safetensors"
SIDECAR = "stats.json"


def cache_root() -> Path:
    return Path(os.environ.get("HFMERGE_CACHE", Path.home() / ".cache" / "hfmerge")) / "stats"


def fingerprint(ref: str) -> str:
    """Identity of a model or dataset: a local path's file sizes+mtimes, or a Hub ref as given (with sha)."""
    path = Path(ref).expanduser()
    if not path.exists():
        return ref
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"{path.resolve()}#{h.hexdigest()[:16]}"


def _local_model(ref: str) -> Path:
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    try:
        from hfmerge.hub import download
    except ImportError:
        raise HfMergeError(f"model path {ref} does not exist") from None
    return download(ref)


def compute_stats(kind: str, model_ref: str, data: str, *, out: Path | None = None, samples: int = 1000,
                  split: str = "train", prompt_format: str = "plain", max_length: int = 512,
                  fisher_variant: str = "hard_last", base_ref: str | None = None, skip: list[str] | None = None,
                  sparsity: float = 0.1, lr: float = 0.1, epochs: int = 1, seed: int = 0,
                  progress: bool = True) -> Path:
    """Statistics of one model on ``data``; returns the folder holding them (``out`` or the cache)."""
    from hfmerge.stats.data import FORMATS

    require("statistics", kind, KINDS)
    require("prompt format", prompt_format, FORMATS)  # before any model or dataset is fetched
    if kind == "masks" and not base_ref:
        raise HfMergeError("trained masks need the base model (--base)")
    settings = {"kind": kind, "model": fingerprint(model_ref), "data": fingerprint(data), "split": split,
                "samples": samples, "prompt_format": prompt_format, "max_length": max_length, "seed": seed,
                "skip": sorted(skip or [])}
    if kind == "fisher":
        settings["variant"] = fisher_variant
    if kind == "masks":
        settings.update(base=fingerprint(base_ref), sparsity=sparsity, lr=lr, epochs=epochs)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(out) if out else cache_root() / key
    sidecar = folder / SIDECAR
    if sidecar.exists() and json.loads(sidecar.read_text()).get("key") == key:
        return folder

    import torch
    from transformers import AutoTokenizer

    from hfmerge.engine import is_skipped, peak_rss_bytes
    from hfmerge.stats import compute
    from hfmerge.stats.data import load_rows, tokenize
    from hfmerge.writer import save_tensors

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    path = _local_model(model_ref)
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = tokenize(load_rows(data, split, samples), tokenizer, prompt_format, max_length, origin=data)
    model = _load_fp32(path)
    merged = {n for n, _ in model.named_parameters() if not is_skipped(n, skip or [])}
    if kind == "fisher":
        stats = compute.fisher(model, examples, fisher_variant, merged, progress)
    elif kind == "regmean":
        stats = {n: g for n, g in compute.grams(model, examples, progress).items() if not is_skipped(n, skip or [])}
    else:
        base = Checkpoint(base_ref, LocalReader(_local_model(base_ref).resolve()))
        names = sorted(n for n in merged if n in base.tensors)
        base_state = {n: base.read(n) for n in names}
        base.close()
        stats = compute.trained_masks(model, base_state, names, examples, sparsity, lr, epochs, seed=seed,
                                      progress=progress)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors(tmp / STATS_FILE, dict(sorted(stats.items())))
    meta = dict(settings, key=key, model_ref=model_ref, data_ref=data, examples=len(examples),
                seconds=round(time.perf_counter() - t0, 3), peak_rss_bytes=peak_rss_bytes())
    if kind == "masks":
        meta["kept_fraction"] = sum(int(m.sum()) for m in stats.values()) / max(1, sum(m.numel() for m in
                                                                                        stats.values()))
    (tmp / SIDECAR).write_text(json.dumps(meta, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, folder)
    return folder


def _load_fp32(path: Path):
    """The model in fp32, filled tensor by tensor with pread (no mapped file pages on top of the model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = Checkpoint(str(path), LocalReader(Path(path).resolve()))
    try:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32)
        with torch.no_grad():
            for name, param in model.state_dict(keep_vars=True).items():
                if name in ckpt.tensors:
                    param.copy_(ckpt.read(name))
                elif not (name.startswith("lm_head") and model.config.tie_word_embeddings) and \
                        isinstance(param, torch.nn.Parameter):
                    raise HfMergeError(f"{path} lacks the weight {name}")
        return model
    finally:
        ckpt.close()


def open_stats(folder: str | Path, kind: str) -> Checkpoint:
    """Open saved statistics for streaming (like a checkpoint, tensors keyed by name)."""
    folder = Path(folder).expanduser()
    sidecar = folder / SIDECAR
    if not sidecar.exists():
        raise HfMergeError(f"{folder} holds no statistics (no {SIDECAR}); make them with `hfmerge stats`")
    got = json.loads(sidecar.read_text()).get("kind")
    if got != kind:
        raise HfMergeError(f"{folder} holds {got} statistics, but the method needs {kind}")
    return Checkpoint(str(folder), LocalReader(folder.resolve()), require_config=False)
