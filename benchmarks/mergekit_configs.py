"""mergekit's own example configs and typical community configs, run through hfmerge and mergekit 0.1.5.

    .venv/bin/python benchmarks/mergekit_configs.py [--repeats 1]

A small synthetic Llama family (base + 3 experts = base + dense noise of 0.5x each tensor's scale, so SLERP takes
its spherical branch; float32 checkpoints, so task vectors have no exact ties at top-k thresholds; 8 layers,
hidden 256, vocab 2000, untied, 14 M parameters) is built once in benchmarks/_work/mk-family-fp32.
The configs are written here in mergekit's YAML, adapted from mergekit's examples/ and common Hub model cards to the
family's paths and layer count. Each config runs in both tools (subprocesses, wall time); mergekit computes in
float32 (``dtype: float32``, float32 output) as hfmerge does. Deterministic methods: the fraction of elements
equal within one bf16 rounding step, and within 1e-5 relative (``strict``). DARE / DELLA (random masks differ by
construction): the distance of the merge from the base, ‖θ − θ₀‖, hfmerge over mergekit, and the fraction of
entries left at the base's value."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from run import agreement, ensure_mergekit  # noqa: E402

WORK = HERE / "_work" / "mk-family-fp32"
LAYERS = 8
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 704,
          "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
          "vocab_size": 2000, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "dtype": "float32",
          "tie_word_embeddings": False, "rope_theta": 10000.0, "bos_token_id": 0, "eos_token_id": 1}


def family() -> dict[str, str]:
    names = ["base", "a", "b", "c"]
    if not all((WORK / n / "model.safetensors").exists() for n in names):
        sys.path.insert(0, str(HERE))
        from memory import shapes

        gen = torch.Generator().manual_seed(0)
        base = {n: torch.randn(s, generator=gen) * (0.02 if len(s) > 1 else 1.0) for n, s in shapes(CONFIG)}
        base["lm_head.weight"] = torch.randn(base["model.embed_tokens.weight"].shape, generator=gen) * 0.02
        for i, n in enumerate(names):
            (WORK / n).mkdir(parents=True, exist_ok=True)
            (WORK / n / "config.json").write_text(json.dumps(CONFIG, indent=2))
            sd = base if i == 0 else {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen)
                                      for k, v in base.items()}
            save_file(sd, WORK / n / "model.safetensors", metadata={"format": "pt"})
    return {n: str(WORK / n) for n in names}


def full_slices(*models: str, params: dict | None = None) -> list[dict]:
    return [{"sources": [{"model": m, "layer_range": [0, LAYERS]} for m in models], **(params or {})}]


T_FILTERS = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
             {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]


def configs(m: dict[str, str]) -> dict[str, tuple[dict, str]]:
    """name -> (mergekit config, kind): kind is 'exact' (agreement), 'random' (distance) or 'refused'."""
    base, a, b, c = m["base"], m["a"], m["b"], m["c"]
    return {
        # mergekit's examples/
        "examples/linear.yml": ({"merge_method": "linear", "models": [
            {"model": a, "parameters": {"weight": 1.0}}, {"model": b, "parameters": {"weight": 0.3}},
            {"model": c, "parameters": {"weight": 0.5}}]}, "exact"),
        "examples/ties.yml": ({"merge_method": "ties", "base_model": base, "parameters": {"normalize": True,
                                                                                           "int8_mask": True},
                               "models": [
            {"model": a, "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}},
            {"model": b, "parameters": {"density": 0.5, "weight": [0, 0.3, 0.7, 1]}},
            {"model": c, "parameters": {"density": 0.33, "weight": [{"filter": "mlp", "value": 0.5},
                                                                     {"value": 0}]}}]}, "exact"),
        "examples/bio-merge.yml": ({"merge_method": "ties", "base_model": base,
                                    "parameters": {"normalize": False, "int8_mask": True}, "models": [
            {"model": a, "parameters": {"density": 0.5, "weight": 0.5}},
            {"model": b, "parameters": {"density": 0.5, "weight": 0.5}}]}, "exact"),
        "examples/gradient-slerp.yml": ({"merge_method": "slerp", "base_model": a, "slices": full_slices(a, b),
                                         "parameters": {"t": T_FILTERS}}, "exact"),
        "examples/orcamini-platy-44layer.yml": ({"merge_method": "passthrough", "slices": [
            {"sources": [{"model": a, "layer_range": [0, 6]}]},
            {"sources": [{"model": b, "layer_range": [4, 8]}]}]}, "refused"),
        "examples/arcee_fusion.yml": ({"merge_method": "arcee_fusion", "base_model": a,
                                       "models": [{"model": a}, {"model": b}]}, "refused"),
        # typical community configs
        "slerp, slices + per-filter t gradients": ({"merge_method": "slerp", "base_model": a,
                                                    "slices": full_slices(a, c), "parameters": {"t": T_FILTERS},
                                                    "chat_template": "auto"}, "exact"),
        "dare_ties": ({"merge_method": "dare_ties", "base_model": base, "parameters": {"int8_mask": True},
                       "models": [{"model": base}] + [{"model": x, "parameters": {"density": 0.53, "weight": w}}
                                                      for x, w in ((a, 0.4), (b, 0.3), (c, 0.3))]}, "random"),
        "breadcrumbs_ties": ({"merge_method": "breadcrumbs_ties", "base_model": base,
                              "parameters": {"normalize": True}, "models": [
            {"model": x, "parameters": {"density": 0.9, "gamma": 0.01, "weight": w}}
            for x, w in ((a, 0.6), (b, 0.4))]}, "exact"),
        "della": ({"merge_method": "della", "base_model": base, "parameters": {"lambda": 1.0}, "models": [
            {"model": x, "parameters": {"density": 0.5, "epsilon": 0.1, "weight": 1.0}} for x in (a, b)]}, "random"),
        "model_stock": ({"merge_method": "model_stock", "base_model": base,
                         "models": [{"model": x} for x in (base, a, b, c)]}, "exact"),
        "ties with gradients": ({"merge_method": "ties", "base_model": base, "models": [
            {"model": a, "parameters": {"density": [0.2, 0.5, 0.8], "weight": [1.0, 0.5]}},
            {"model": b, "parameters": {"density": 0.5, "weight": [{"filter": "self_attn", "value": [0.3, 1.0]},
                                                                    {"value": 0.7}]}}]}, "exact"),
        "task_arithmetic, lambda, normalize false": ({"merge_method": "task_arithmetic", "base_model": base,
                                                      "parameters": {"lambda": 0.7, "normalize": False}, "models": [
            {"model": x, "parameters": {"weight": w}} for x, w in ((a, 0.5), (b, 0.3), (c, 0.2))]}, "exact"),
        "linear without base": ({"merge_method": "linear", "models": [
            {"model": a, "parameters": {"weight": 0.6}}, {"model": c, "parameters": {"weight": 0.4}}]}, "exact"),
    }


def strict_agreement(a: Path, b: Path) -> float:
    """Fraction of elements with |x − y| ≤ 1e-5·|y| + 1e-8."""
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    ok = sum(int(((x[k].double() - v.double()).abs() <= 1e-5 * v.double().abs() + 1e-8).sum()) for k, v in y.items())
    return ok / sum(v.numel() for v in y.values())


def distance(out: Path, base: Path) -> tuple[float, float]:
    """‖θ − θ₀‖ over the model, and the fraction of entries equal to the base's."""
    o, b = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    sq = same = n = 0.0
    for k, v in o.items():
        d = v.float() - b[k].float()
        sq += float((d * d).sum())
        same += int((d == 0).sum())
        n += d.numel()
    return sq ** 0.5, same / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="forget the rows of earlier runs")
    args = ap.parse_args()
    models = family()
    mergekit = ensure_mergekit()
    hfmerge = str(Path(sys.executable).parent / "hfmerge")
    done = WORK / "rows.jsonl"  # finished rows, kept across runs (--fresh starts over)
    if args.fresh:
        done.unlink(missing_ok=True)
    rows = [json.loads(line) for line in done.read_text().splitlines()] if done.exists() else []
    for name, (mk, kind) in configs(models).items():
        if any(r["config"] == name for r in rows):
            continue
        mk = {**mk, "dtype": "float32"}
        cfg = WORK / "config.yml"
        cfg.write_text(yaml.safe_dump(mk, sort_keys=False))
        row: dict = {"config": name, "method": mk["merge_method"]}
        hf_t, mk_t = [], []
        for _ in range(args.repeats):
            for out in ("out-hf", "out-mk"):
                subprocess.run(["rm", "-rf", str(WORK / out)], check=True)
            t0 = time.perf_counter()
            res = subprocess.run([hfmerge, "merge", str(cfg), "-o", str(WORK / "out-hf"), "--overwrite", "-q"],
                                 capture_output=True, text=True)
            hf_t.append(time.perf_counter() - t0)
            if res.returncode:
                row["hfmerge"] = "refused: " + res.stderr.strip().splitlines()[-1].split("not supported: ")[-1]
            t0 = time.perf_counter()
            subprocess.run([str(mergekit), str(cfg), str(WORK / "out-mk"), "--no-copy-tokenizer", "--allow-crimes",
                            "--random-seed", "0", "--no-write-model-card"], capture_output=True)
            mk_t.append(time.perf_counter() - t0)
        mk_ok = (WORK / "out-mk" / "model.safetensors").exists() or any((WORK / "out-mk").glob("*.safetensors"))
        row.update(hfmerge_s=round(statistics.median(hf_t), 1), mergekit_s=round(statistics.median(mk_t), 1))
        if "hfmerge" not in row:
            row["hfmerge"] = "runs"
        if row["hfmerge"] == "runs" and mk_ok:
            row["ratio"] = round(row["hfmerge_s"] / row["mergekit_s"], 2)
            if kind == "exact":
                row["agreement"] = round(agreement(WORK / "out-hf", WORK / "out-mk"), 6)
                row["strict"] = round(strict_agreement(WORK / "out-hf", WORK / "out-mk"), 6)
            elif kind == "random":
                base = Path(mk.get("base_model"))
                (dh, sh), (dm, sm) = distance(WORK / "out-hf", base), distance(WORK / "out-mk", base)
                row.update(distance_ratio=round(dh / dm, 4), at_base_hf=round(sh, 4), at_base_mk=round(sm, 4))
        row["mergekit"] = "runs" if mk_ok else "fails"
        for out in ("out-hf", "out-mk"):
            subprocess.run(["rm", "-rf", str(WORK / out)], check=True)
        rows.append(row)
        with done.open("a") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(json.dumps(row, ensure_ascii=False), flush=True)
    lines = ["| config | merge_method | hfmerge | agreement with mergekit | hfmerge s | mergekit s | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "agreement" in r:
            agree = f"{100 * r['agreement']:.2f}% of elements ({100 * r['strict']:.2f}% within 1e-5)"
        elif "distance_ratio" in r:
            agree = (f"‖θ−θ₀‖ ratio {r['distance_ratio']:.3f}; at base {100 * r['at_base_hf']:.1f}% vs "
                     f"{100 * r['at_base_mk']:.1f}%")
        else:
            agree = "-"
        lines.append(f"| {r['config']} | {r['method']} | {r['hfmerge']} | {agree} | {r['hfmerge_s']} | "
                     f"{r['mergekit_s']} | {r.get('ratio', '-')} |")
    (HERE / "mergekit_configs.json").write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d")},
                                                           indent=2, ensure_ascii=False) + "\n")
    (HERE / "mergekit_configs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
