"""Independent whole-model reference implementations of the merge methods, written the way the papers'
reference code is (flatten the model, kthvalue, stack): no streaming, no chunks, no shared code with
hfmerge's methods except the documented DARE seed derivation."""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from hfmerge.methods.steps import RNG_BLOCK, block_seed


def load_model(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def merged_names(base: dict, skip: list[str]) -> list[str]:
    return [n for n, t in base.items() if t.is_floating_point() and not any(fnmatch.fnmatchcase(n, p) for p in skip)]


def topk_masks(taus: dict[str, torch.Tensor], names: list[str], density: float, scope: str) -> dict:
    """Per task: keep |τ| >= kthvalue(|τ|, n - floor(n·density)) over the model (global) or per tensor."""
    groups = [names] if scope == "global" else [[n] for n in names]
    masks = {}
    for group in groups:
        flat = torch.cat([taus[n].reshape(taus[n].shape[0], -1) for n in group], dim=1).abs()
        n = flat.shape[1]
        k = n - math.floor(n * density)
        thr = flat.kthvalue(k, dim=1, keepdim=True).values if k > 0 else torch.zeros(flat.shape[0], 1)
        for name in group:
            t = taus[name].abs()
            masks[name] = t >= thr.view(-1, *[1] * (t.dim() - 1))
    return masks


def dare_mask(seed: int, name: str, task: int, numel: int, p: float) -> torch.Tensor:
    """Whole blocks of 15-bit uniforms (the low 15 bits of each 16-bit quarter of a 64-bit draw), then cut."""
    gen = torch.Generator()
    blocks = []
    for b in range(math.ceil(numel / RNG_BLOCK)):
        gen.manual_seed(block_seed(seed, name, task, b))
        words = torch.empty(RNG_BLOCK // 4, dtype=torch.int64).random_(generator=gen)
        blocks.append(words.view(torch.int16).int() % (1 << 15))
    return torch.cat(blocks)[:numel] >= round(p * (1 << 15))


def reference_merge(method: str, base_dir: Path, expert_dirs: list[Path], params: dict,
                    skip: list[str], weights: list[float] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 merged tensors (every tensor, skipped ones from the base)."""
    base = load_model(base_dir)
    experts = [load_model(d) for d in expert_dirs]
    names = merged_names(base, skip)
    w = torch.tensor(weights or [1.0] * len(experts))
    out = {n: t.float() for n, t in base.items()}
    thetas = {n: torch.stack([e[n].float() for e in experts]) for n in names}
    taus = {n: (thetas[n] - base[n].float()) * w.view(-1, *[1] * base[n].dim()) for n in names}
    if method == "soup":
        for n in names:
            out[n] = (thetas[n] * w.view(-1, *[1] * base[n].dim())).sum(0) / w.sum()
    elif method == "task_arithmetic":
        for n in names:
            out[n] = base[n].float() + params["scaling"] * taus[n].sum(0)
    elif method == "ties":
        masks = topk_masks(taus, names, params["density"], params["topk_scope"])
        for n in names:
            trimmed = taus[n] * masks[n]
            sign = trimmed.sum(0).sign()
            agree = (trimmed.sign() == sign) & masks[n] & (sign != 0)
            kept = (trimmed * agree).sum(0)
            if params["aggregate"] == "mean":
                kept = kept / agree.sum(0).clamp(min=1)
            out[n] = base[n].float() + params["scaling"] * kept
    elif method == "dare":
        p = params["drop_rate"]
        for n in names:
            masks = torch.stack([dare_mask(seed, n, i, base[n].numel(), p).view(base[n].shape)
                                 for i in range(len(experts))])
            out[n] = base[n].float() + params["scaling"] * (taus[n] * masks / (1 - p)).sum(0)
    elif method == "consensus":
        for n in names:
            mtl = taus[n].sum(0)
            tall = taus[n].abs() > params["mask_lambda"] * (mtl - taus[n]).abs()
            out[n] = base[n].float() + params["scaling"] * mtl * (tall.sum(0) >= params["k"])
    elif method == "localize_stitch":
        masks = topk_masks(taus, names, params["sparsity"], params.get("topk_scope", "global"))
        for n in names:
            overlap = masks[n].sum(0).clamp(min=1)
            out[n] = base[n].float() + (taus[n] * masks[n]).sum(0) / overlap
    else:
        raise ValueError(method)
    return out
