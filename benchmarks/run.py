"""hfmerge vs mergekit vs the raw I/O floor, side by side in one run (ratios, not absolute seconds).

    .venv/bin/python benchmarks/run.py [--size 0.5b] [--experts 2] [--repeats 2]

Synthetic Llama-shaped bf16 checkpoints (base + N experts = base + noise) are built once in benchmarks/_work.
mergekit is installed from PyPI into its own venv (benchmarks/.venv-mergekit, torch CPU wheel first). Every run
is a subprocess (wall time; peak RSS from wait4); runs alternate between the tools; medians over repeats.
Both tools merge every tensor (hfmerge with `skip: []`, as mergekit does), so outputs are comparable
element by element; the page cache is warm for every run (a first read primes it). Agreement is checked against
mergekit computing in float32 (`dtype: float32, out_dtype: bfloat16`, as hfmerge computes) and, for reference,
against its default bfloat16 arithmetic. `startup` is the fixed cost of starting Python and importing torch and
hfmerge, included in every hfmerge time (mergekit pays the same for torch); `merge alone` is the streaming merge
without it (the report's merge_seconds)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from memory import WORK, make_family, run  # noqa: E402

MK_VENV = HERE / ".venv-mergekit"
FLOOR = """
import sys, os
out = open(sys.argv[1], "wb")
total = 0
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            total += len(block)
            if path == sys.argv[2]:
                out.write(block)  # the output is as large as one input
out.close()
"""
# hfmerge method/params  <->  mergekit merge_method/params (same computation where agreement is checked)
CASES = {
    "task_arithmetic": ({"method": "task_arithmetic", "parameters": {"scaling": 1.0}},
                        {"merge_method": "task_arithmetic", "model_params": {"weight": 1.0}}, True),
    "ties (tensor, mean)": ({"method": "ties", "parameters": {"density": 0.2, "scaling": 1.0, "aggregate": "mean",
                                                             "topk_scope": "tensor"}},
                            {"merge_method": "ties", "model_params": {"weight": 1.0, "density": 0.2},
                             "parameters": {"normalize": True}}, True),
    "dare": ({"method": "dare", "parameters": {"drop_rate": 0.8, "scaling": 1.0}},
             {"merge_method": "dare_linear", "model_params": {"weight": 1.0, "density": 0.2}}, False),
    "ties (global, sum)": ({"method": "ties", "parameters": {"density": 0.2, "scaling": 1.0}}, None, False),
}


def ensure_mergekit() -> Path:
    exe = MK_VENV / "bin" / "mergekit-yaml"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MK_VENV)], check=True)
        pip = [str(MK_VENV / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # the local CPU wheel first
        subprocess.run([*pip, "mergekit"], check=True)
    return exe


def agreement(a: Path, b: Path) -> float:
    """Fraction of elements equal within one bf16 rounding step (in a subprocess of the project's venv)."""
    code = (
        "import sys, torch; from safetensors.torch import load_file;"
        "from pathlib import Path;"
        "load=lambda d: {k: v for f in sorted(Path(d).glob('*.safetensors')) for k, v in load_file(f).items()};"
        "A, B = load(sys.argv[1]), load(sys.argv[2]); ok = n = 0\n"
        "for k in A:\n"
        "    x, y = A[k].float(), B[k].float(); tol = y.abs() * 2**-7 + 1e-6\n"
        "    ok += int(((x - y).abs() <= tol).sum()); n += x.numel()\n"
        "print(ok / n)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True, check=True)
    return float(res.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="0.5b")
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-mergekit", action="store_true")
    args = ap.parse_args()
    base, experts = make_family(args.size, args.experts)
    ckpt = (base / "model.safetensors").stat().st_size
    inputs = [str(f / "model.safetensors") for f in [base, *experts]]
    mergekit = None if args.no_mergekit else ensure_mergekit()
    hfmerge = str(Path(sys.executable).parent / "hfmerge")
    run([sys.executable, "-c", FLOOR, str(WORK / "floor.out"), *inputs])  # prime the page cache
    startup = statistics.median(run([sys.executable, "-c", "import hfmerge.cli, hfmerge.engine"])[0]
                                for _ in range(3))
    floor = statistics.median(run([sys.executable, "-c", FLOOR, str(WORK / "floor.out"), *inputs])[0]
                              for _ in range(args.repeats))
    rows = []
    for name, (ours, theirs, compare) in CASES.items():
        cfg = dict(ours, base_model=str(base), models=[str(e) for e in experts], skip=[], dtype="bfloat16")
        (WORK / "hf.yaml").write_text(yaml.safe_dump(cfg))
        if theirs and mergekit:
            mk = {"merge_method": theirs["merge_method"], "base_model": str(base), "dtype": "bfloat16",
                  "parameters": theirs.get("parameters", {}),
                  "models": [{"model": str(e), "parameters": theirs["model_params"]} for e in experts]}
            (WORK / "mk.yaml").write_text(yaml.safe_dump(mk))
            (WORK / "mk32.yaml").write_text(yaml.safe_dump(dict(mk, dtype="float32", out_dtype="bfloat16")))
        times, merge_times, mk_times, rss, mk_rss = [], [], [], [], []
        for _ in range(args.repeats):
            t, r = run([hfmerge, "merge", str(WORK / "hf.yaml"), "-o", str(WORK / "out-hf"), "--overwrite", "-q"])
            times.append(t)
            rss.append(r)
            merge_times.append(json.loads((WORK / "out-hf" / "merge_report.json").read_text())["merge_seconds"])
            if theirs and mergekit:
                t, r = run([str(mergekit), str(WORK / "mk.yaml"), str(WORK / "out-mk"), "--no-copy-tokenizer",
                            "--allow-crimes", "--out-shard-size", "5B"])
                mk_times.append(t)
                mk_rss.append(r)
        row = {"method": name, "hfmerge_s": round(statistics.median(times), 1),
               "hfmerge_over_floor": round(statistics.median(times) / floor, 2),
               "merge_s": round(statistics.median(merge_times), 2),
               "merge_over_floor": round(statistics.median(merge_times) / floor, 2),
               "hfmerge_rss_over_checkpoint": round(max(rss) / ckpt, 3)}
        if mk_times:
            row.update(mergekit_s=round(statistics.median(mk_times), 1),
                       ratio=round(statistics.median(times) / statistics.median(mk_times), 3),
                       mergekit_rss_over_checkpoint=round(max(mk_rss) / ckpt, 3))
            if compare:
                row["agreement_bf16"] = round(agreement(WORK / "out-hf", WORK / "out-mk"), 6)
                run([str(mergekit), str(WORK / "mk32.yaml"), str(WORK / "out-mk"), "--no-copy-tokenizer",
                     "--allow-crimes", "--out-shard-size", "5B"])
                row["agreement"] = round(agreement(WORK / "out-hf", WORK / "out-mk"), 6)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"size": args.size, "experts": args.experts, "repeats": args.repeats, "checkpoint_gib":
              round(ckpt / 2**30, 2), "io_floor_s": round(floor, 2), "startup_s": round(startup, 2), "rows": rows,
              "date": time.strftime("%Y-%m-%d")}
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"size {args.size}, base + {args.experts} experts, {result['checkpoint_gib']} GiB per checkpoint, "
             f"I/O floor {floor:.1f} s, startup (Python + torch + hfmerge imports) {startup:.1f} s", "",
             "| method | hfmerge s | mergekit s | hfmerge / mergekit | hfmerge / I/O floor (merge alone) | peak RSS / "
             "checkpoint (hfmerge, mergekit) | agreement (mergekit fp32, bf16) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['hfmerge_s']} | {r.get('mergekit_s', '-')} | {r.get('ratio', '-')} | "
                     f"{r['hfmerge_over_floor']} ({r['merge_over_floor']}) | {r['hfmerge_rss_over_checkpoint']}, "
                     f"{r.get('mergekit_rss_over_checkpoint', '-')} | {r.get('agreement', '-')}, "
                     f"{r.get('agreement_bf16', '-')} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
