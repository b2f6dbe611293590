"""hfmerge's SVD methods against the systematic study's own implementation (its mergekit fork,
github.com/kaganhitit11/mergekit) on the same synthetic Llama-shaped checkpoints, computing in float32.

    .venv/bin/python benchmarks/study_fork.py --fork /path/to/fork/source --size tiny --experts 3

The fork runs from its source folder in the mergekit venv of benchmarks/run.py (benchmarks/.venv-mergekit) with
the pydantic it pins (2.10) and transformers 4.57 (installed into benchmarks/_work/fork-deps). Both tools merge
every tensor (hfmerge with ``skip: []``); agreement is the relative Frobenius error of the merged task vector
θ − θ₀ per tensor (max and median over tensors); time is the wall time of each command (start-up included)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from memory import WORK, make_family, run  # noqa: E402

MK_PY = HERE / ".venv-mergekit" / "bin" / "python"
DEPS = WORK / "fork-deps"
BETA = 0.2  # the study's Subspace Boosting β
CASES = {  # label: (hfmerge method + parameters, fork merge_method + model params + parameters)
    "tsv_m": ({"method": "tsv_m"}, {"merge_method": "tsvm"}),
    "iso_c": ({"method": "iso_c"}, {"merge_method": "iso_c"}),
    "task_arithmetic + SB": ({"method": "task_arithmetic", "parameters": {"subspace_boost": BETA}},
                             {"merge_method": "task_arithmetic_sb", "parameters": {"svd_thresh": BETA}}),
    "ties (tensor, mean) + SB": ({"method": "ties", "parameters": {"density": 0.2, "aggregate": "mean",
                                                                 "topk_scope": "tensor", "subspace_boost": BETA}},
                                 {"merge_method": "ties_sb", "model_params": {"density": 0.2},
                                  "parameters": {"normalize": True, "svd_thresh": BETA}}),
}

COMPARE = """
import sys, json, torch
from pathlib import Path
from safetensors.torch import load_file
load = lambda d: {k: v for f in sorted(Path(d).glob('*.safetensors')) for k, v in load_file(f).items()}
base, a, b = (load(p) for p in sys.argv[1:4])
errs = {}
for k, t in base.items():
    d_a, d_b = a[k].double() - t.double(), b[k].double() - t.double()
    errs[k] = float((d_a - d_b).norm() / d_b.norm().clamp_min(1e-30))
print(json.dumps(errs))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fork", type=Path, required=True, help="source folder of the study's mergekit fork")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--experts", type=int, default=3)
    args = ap.parse_args()
    if not (DEPS / "transformers").exists():  # the versions the fork was written for (newer ones fail its pydantic)
        pip = [str(HERE / ".venv-mergekit" / "bin" / "pip"), "install", "-q", "--target", str(DEPS)]
        subprocess.run([*pip, "pydantic==2.10.6", "pydantic-core==2.27.2", "requests"], check=True)
        subprocess.run([*pip, "--no-deps", "transformers==4.57.1", "huggingface_hub==0.36.0", "tokenizers==0.22.1"],
                       check=True)
    base, experts = make_family(args.size, args.experts)
    env_path = f"{args.fork}:{DEPS}"
    rows = []
    for label, (ours, theirs) in CASES.items():
        slug = label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("+", "sb")
        cfg_h = {"base_model": str(base), "models": [str(e) for e in experts], "skip": [], "dtype": "float32", **ours}
        cfg_m = {"merge_method": theirs["merge_method"], "base_model": str(base), "dtype": "float32",
                 "out_dtype": "float32", "parameters": theirs.get("parameters", {}),
                 "models": [{"model": str(e), "parameters": {"weight": 1.0, **theirs.get("model_params", {})}}
                            for e in experts]}
        (WORK / f"fork-{slug}.yaml").write_text(yaml.safe_dump(cfg_m))
        (WORK / f"hfm-{slug}.yaml").write_text(yaml.safe_dump(cfg_h))
        out_h, out_m = WORK / f"out-hfm-{slug}", WORK / f"out-fork-{slug}"
        secs_h, rss_h = run([str(Path(sys.executable).parent / "hfmerge"), "merge", str(WORK / f"hfm-{slug}.yaml"),
                             "-o", str(out_h), "--overwrite", "-q"])
        secs_m, rss_m = run(["env", f"PYTHONPATH={env_path}", str(MK_PY), "-m", "mergekit.scripts.run_yaml",
                             str(WORK / f"fork-{slug}.yaml"), str(out_m), "--no-copy-tokenizer", "--quiet"])
        res = subprocess.run([sys.executable, "-c", COMPARE, str(base), str(out_h), str(out_m)], capture_output=True,
                             text=True, check=True)
        errs = json.loads(res.stdout)
        worst = max(errs, key=errs.get)
        ordered = sorted(errs.values())
        rows.append({"method": label, "hfmerge_s": round(secs_h, 1), "fork_s": round(secs_m, 1),
                     "time_ratio": round(secs_h / secs_m, 2), "hfmerge_rss_gib": round(rss_h / 2**30, 2),
                     "fork_rss_gib": round(rss_m / 2**30, 2), "max_rel_err": errs[worst], "worst_tensor": worst,
                     "median_rel_err": ordered[len(ordered) // 2]})
        print(json.dumps(rows[-1]), flush=True)
    (HERE / f"study-fork-{args.size}.json").write_text(json.dumps(
        {"size": args.size, "experts": args.experts, "fork": "kaganhitit11/mergekit", "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
