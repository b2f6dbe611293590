"""Where hfmerge's TIES and mergekit's differ: top-k ties at the per-tensor threshold.

    .venv/bin/python benchmarks/ties_agreement.py BASE EXPERT1 EXPERT2 HFMERGE_OUT MERGEKIT_OUT [--density 0.2]

hfmerge keeps every |τᵢ| ≥ the k-th smallest value (the TIES reference rule, ties included); mergekit keeps
exactly ⌊density·n⌋ entries (argsort order among equal values). Prints the share of elements that disagree
(beyond one bf16 step), of elements where some |τᵢ| equals its threshold, of disagreements at such ties, and
the agreement on all other elements."""

from __future__ import annotations

import argparse

import torch
from safetensors import safe_open


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("experts", nargs="+")
    ap.add_argument("--ours", required=True)
    ap.add_argument("--theirs", required=True)
    ap.add_argument("--density", type=float, default=0.2)
    a = ap.parse_args()
    opened = [safe_open(f"{m}/model.safetensors", "pt") for m in (a.base, *a.experts)]
    ours, theirs = safe_open(f"{a.ours}/model.safetensors", "pt"), safe_open(f"{a.theirs}/model.safetensors", "pt")
    n = bad = tied = bad_tied = 0
    for name in opened[0].keys():
        base = opened[0].get_tensor(name).float()
        taus = torch.stack([f.get_tensor(name).float() - base for f in opened[1:]])
        k = taus[0].numel() - int(taus[0].numel() * a.density)
        tie = torch.zeros_like(base, dtype=torch.bool)
        for t in taus:
            tie |= t.abs() == t.abs().reshape(-1).kthvalue(k).values
        x, y = ours.get_tensor(name).float(), theirs.get_tensor(name).float()
        diff = (x - y).abs() > y.abs() * 2**-7 + 1e-6
        n += diff.numel()
        bad, tied, bad_tied = bad + int(diff.sum()), tied + int(tie.sum()), bad_tied + int((diff & tie).sum())
    print(f"elements {n}: disagree {bad / n:.5f}; at a threshold tie {tied / n:.5f}; disagreements at a tie "
          f"{bad_tied / max(bad, 1):.4f}; agreement on the other elements {1 - (bad - bad_tied) / (n - tied):.6f}")


if __name__ == "__main__":
    main()
