"""A lazy merge straight from the Hub vs `--download` + a local merge, on the loopback Hub made realistic.

    .venv/bin/python benchmarks/remote.py [--size 270m] [--rtt 0.05] [--bandwidth 25e6]

The Hub (hfmerge/localhub.py) answers every request after one round trip (``--rtt``), caps each connection
at ``--bandwidth`` bytes/s, redirects LFS resolves to a storage bridge on another host name signed for the
exact range, and rate-limits ``/resolve`` at the free tier's rate scaled to this benchmark's bytes (5,000
calls per 5 minutes for a 96 GB merge -> proportionally fewer here). Base + 2 experts of a synthetic
Llama-shaped bf16 checkpoint (benchmarks/memory.py) are published, then merged by `hfmerge merge` in a
subprocess, lazily and with ``--download`` (into a fresh HF cache), for task arithmetic and TIES with global
top-k. Wall times, ratios, /resolve calls (per GiB fetched), rate-limit waits, peak RSS and the outputs'
equality go to benchmarks/remote-<size>.json."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import memory  # noqa: E402

memory.SIZES.setdefault("270m", (1024, 2816, 18, 16, 4, 32000))  # ≈ 0.26 B parameters, tied embeddings
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
USER = "hfmerge-user"
CASES = {"task_arithmetic": ["--method", "task_arithmetic", "--set", "scaling=0.5"],
         "ties (global top-k)": ["--method", "ties", "--set", "density=0.2"]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_merge(env: dict, args: list[str], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "hfmerge.cli", "merge", *args, "-o", str(out), "-q"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:  # VmHWM: the child's own high-water mark (a forked child's rusage counts ours)
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) * 1024)
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "merge_report.json").exists():
        raise SystemExit(f"merge failed: {log.read_text()[-2000:]}")
    report = json.loads((out / "merge_report.json").read_text())
    return {"wall_seconds": round(wall, 2), "peak_rss_gib": round(peak / 2**30, 3), "report": report,
            "weights_sha256": sha(out / "model.safetensors")}


def make_family(size: str) -> tuple[Path, list[Path]]:
    """memory.py's checkpoints, generated in a child process that knows the sizes added here."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import remote, memory; "
            f"memory.generate({size!r}, 2)")
    subprocess.run([sys.executable, "-c", code], check=True)
    return memory.make_family(size, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="270m", choices=sorted(memory.SIZES))
    ap.add_argument("--rtt", type=float, default=0.05)
    ap.add_argument("--bandwidth", type=float, default=25e6)
    ap.add_argument("--read-ahead", default="512MiB")
    ap.add_argument("--connections", type=int, default=8)
    opts = ap.parse_args()

    from huggingface_hub import HfApi, constants

    from hfmerge.localhub import Realism, serve

    base, experts = make_family(opts.size)
    work = memory.WORK / f"remote-{opts.size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = serve(work / "hub")
    constants.ENDPOINT = server.url
    os.environ.update(HF_ENDPOINT=server.url, HF_TOKEN=server.token)
    api = HfApi(endpoint=server.url, token=server.token)
    ids = []
    for i, folder in enumerate([base, *experts]):
        repo = f"{USER}/{opts.size}-{'base' if i == 0 else f'expert{i}'}"
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo)
        ids.append(repo)
    total = sum((f / "model.safetensors").stat().st_size for f in (base, *experts))
    limit = max(10, math.ceil(5000 * total / 96e9))  # the free tier's 5,000 / 5 min, scaled to these bytes
    server.hub.realism = Realism(rtt=opts.rtt, bandwidth=opts.bandwidth, bridge=True, resolve_limit=limit,
                                 resolve_window=300.0)
    print(f"{opts.size}: 3 × {total / 3 / 2**30:.2f} GiB, rtt {opts.rtt * 1e3:.0f} ms, "
          f"{opts.bandwidth / 1e6:.0f} MB/s per connection, bridge on, {limit} resolves / 5 min", flush=True)
    results = {"size": opts.size, "checkpoint_bytes": total // 3, "rtt_s": opts.rtt,
               "bandwidth_bytes_per_s": opts.bandwidth, "resolve_limit_per_5min": limit, "cases": {}}
    for name, method in CASES.items():
        args = [*method, "--base", ids[0], "--models", *ids[1:], "--read-ahead", opts.read_ahead,
                "--connections", str(opts.connections)]
        case = {}
        for mode in ("lazy", "download"):
            cache = work / f"cache-{mode}"
            shutil.rmtree(cache, ignore_errors=True)
            env = dict(os.environ, HF_HOME=str(cache), HF_HUB_CACHE=str(cache / "hub"))
            server.hub.reset_counters()
            r = run_merge(env, args + (["--download"] if mode == "download" else []), work / f"out-{mode}")
            c = dict(server.hub.counters)
            tr = r["report"].get("transfer") or {}
            fetched = tr.get("bytes_fetched") or c.get("body_bytes", 0)
            case[mode] = {"wall_seconds": r["wall_seconds"], "merge_seconds": r["report"]["merge_seconds"],
                          "peak_rss_gib": r["peak_rss_gib"], "resolve_calls": c.get("resolve", 0),
                          "bridge_calls": c.get("bridge", 0), "rate_limited_429": c.get("rate_limited", 0),
                          "body_bytes_served": c.get("body_bytes", 0),
                          "resolve_per_gib": round(c.get("resolve", 0) / (fetched / 2**30), 1) if fetched else None,
                          "transfer": tr, "weights_sha256": r["weights_sha256"],
                          "disk_cache_bytes": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
                          if cache.exists() else 0}
            shutil.rmtree(cache, ignore_errors=True)
            print(f"  {name:22s} {mode:8s} {r['wall_seconds']:7.1f} s  resolves {c.get('resolve', 0):4d}  "
                  f"429s {c.get('rate_limited', 0)}  peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
        case["lazy / download"] = round(case["lazy"]["wall_seconds"] / case["download"]["wall_seconds"], 2)
        case["identical"] = case["lazy"]["weights_sha256"] == case["download"]["weights_sha256"]
        results["cases"][name] = case
        print(f"  {name}: lazy / download = {case['lazy / download']}, identical: {case['identical']}", flush=True)
    server.stop()
    out = HERE / f"remote-{opts.size}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
