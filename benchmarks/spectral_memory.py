"""Peak memory and CPU time of the SVD methods (tsv_m, iso_c, Subspace Boosting) on the synthetic Llama-shaped
checkpoints of benchmarks/memory.py (bf16, base + N experts).

    .venv/bin/python benchmarks/spectral_memory.py --size 0.5b --experts 2 --layers 1

Only the first ``--layers`` decoder layers are merged (the others are copied from the base, as skipped tensors
are): a merge's peak memory is per tensor, so it does not depend on how many layers are merged, and a full merge
costs about (number of layers / merged layers) × the SVD seconds. Each run is a subprocess; peak RSS comes from
the OS (wait4 rusage)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from memory import SIZES, WORK, config, make_family, run, shapes  # noqa: E402

CASES = {
    "task_arithmetic (no SVD)": {"method": "task_arithmetic"},
    "iso_c": {"method": "iso_c"},
    "task_arithmetic + SB (β=0.2)": {"method": "task_arithmetic", "parameters": {"subspace_boost": 0.2}},
    "ties (tensor, mean) + SB (β=0.2)": {"method": "ties", "parameters": {"density": 0.2, "aggregate": "mean",
                                                                         "topk_scope": "tensor",
                                                                         "subspace_boost": 0.2}},
    "tsv_m": {"method": "tsv_m"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="0.5b", choices=SIZES)
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--layers", type=int, default=1, help="decoder layers merged (the rest copied)")
    ap.add_argument("--methods", nargs="*", default=list(CASES))
    args = ap.parse_args()
    base, experts = make_family(args.size, args.experts)
    cfg = config(args.size)
    n_layers = cfg["num_hidden_layers"]
    skip = ["*embed_tokens*", "*lm_head*"] + [f"model.layers.{i}.*" for i in range(args.layers, n_layers)]
    largest = max((s for n, s in shapes(cfg) if len(s) == 2 and "embed" not in n), key=lambda s: s[0] * s[1])
    ckpt = (base / "model.safetensors").stat().st_size
    hfmerge = str(Path(sys.executable).parent / "hfmerge")
    rows = []
    for label in args.methods:
        recipe = {"base_model": str(base), "models": [str(e) for e in experts], "skip": skip, **CASES[label]}
        path = WORK / f"spectral-{args.size}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        secs, rss = run([hfmerge, "merge", str(path), "-o", str(WORK / "out-spectral"), "--overwrite", "-q"])
        rows.append({"method": label, "seconds": round(secs, 1), "peak_rss_gib": round(rss / 2**30, 3)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"size": args.size, "experts": args.experts, "layers_merged": args.layers, "layers": n_layers,
              "largest_matrix": list(largest), "largest_matrix_fp32_mib": round(largest[0] * largest[1] * 4 / 2**20, 1),
              "checkpoint_gib": round(ckpt / 2**30, 2), "rows": rows}
    (HERE / f"spectral-memory-{args.size}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
