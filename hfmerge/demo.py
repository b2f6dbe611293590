"""The offline end-to-end demo on a mini-MergeBench of real (tiny) fine-tuned specialists.

The setting follows MergeBench's: a tiny Llama base is pre-trained long enough on a broad corpus (general facts
and a share of every domain's rows) to be a generalist with some skill in each domain's format; five experts are
light full fine-tunes of it (small learning rate, few steps, trl's SFTTrainer) on one domain each, so each is
clearly better than the base on its domain and keeps most of the base's general knowledge. The tasks are
synthetic and checked exactly (hfmerge.demo_data); their test splits hold combinations no training row shows.

Then, using only hfmerge's public API against a Hub-compatible server on 127.0.0.1: publish, pull, merge with
every method of the registry (data methods on the validation splits), tune task arithmetic on the validation
tasks, evaluate everything with lighteval, report MergeBench's measures, push every merge with its card and
results, run the study's protocol over subsets of the five experts when ``hfmerge study`` is available, and
write a results folder (``HFMERGE_RESULTS``) with one sub-folder per merge and ``leaderboard.json``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import zlib
from pathlib import Path

from hfmerge.demo_data import DOMAINS, domain_rows, split_rows, write_dataset

# base: lr 3e-3, warm-up + cosine decay; experts: lr 7e-4, few steps (the light regime in which they keep most of
# the base's knowledge). ``eval_rows`` caps the validation / test splits (the reduced size).
# ``study_sizes``, ``study_repeats``: the study's subset sizes and subsets per size (10 = every one of the 26).
SIZES = {
    "demo": dict(hidden=64, layers=2, base_steps=800, expert_steps=100, eval_rows=30, study_sizes=(2, 3, 4, 5),
                 study_repeats=10, study_rows=30),
    "test": dict(hidden=64, layers=2, base_steps=800, expert_steps=100, eval_rows=20, study_sizes=(2,),
                 study_repeats=3, study_rows=10),
}
BASE_LR, EXPERT_LR = 3e-3, 7e-4
BASE_SHARE = 0.4  # share of each domain's training rows in the base's corpus: a generalist with partial skill
GENERAL_REPEATS = 5  # the general facts' weight in the base's corpus
FREEZE_EMBEDDINGS = True  # experts train every tensor a merge merges (all but the tied embeddings)


# ---- models ----------------------------------------------------------------------------------------------------
def make_tokenizer(folder: Path, corpus: list[str]):
    """A 400-token byte-level BPE trained on the corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(folder)
    return fast


def sft(model, tokenizer, rows: list[dict], steps: int, out: Path, seed: int, lr: float):
    """Full fine-tuning with trl's SFTTrainer on prompt/completion rows (loss on the completion only; AdamW
    without weight decay, 10% warm-up, cosine decay)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(out / "trainer"), use_cpu=True, report_to=[], save_strategy="no",
                     max_length=48, per_device_train_batch_size=32, learning_rate=lr, max_steps=steps, seed=seed,
                     logging_steps=max(1, steps // 4), disable_tqdm=True, lr_scheduler_type="cosine",
                     warmup_steps=max(1, steps // 10), weight_decay=0.0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return trainer.model


def _batches(tokenizer, rows: list[dict], batch: int, rng: random.Random):
    """Endless shuffled batches of (input ids, labels): prompt + completion + EOS, loss on the completion."""
    import torch

    encoded = []
    for r in rows:
        p = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        encoded.append((p + c, [-100] * len(p) + c))
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch + 1, batch):
            items = [encoded[j] for j in order[i:i + batch]]
            width = max(len(ids) for ids, _ in items)
            ids = torch.full((len(items), width), tokenizer.pad_token_id)
            labels = torch.full((len(items), width), -100)
            mask = torch.zeros((len(items), width), dtype=torch.long)
            for k, (x, y) in enumerate(items):
                ids[k, :len(x)], labels[k, :len(y)], mask[k, :len(x)] = torch.tensor(x), torch.tensor(y), 1
            yield ids, labels, mask


def pretrain(model, tokenizer, rows: list[dict], steps: int, lr: float, seed: int, log=print, batch: int = 32):
    """The base's pre-training: a plain causal-LM loop over the corpus (AdamW, 10% warm-up, cosine decay; loss
    on each row's completion), several times cheaper per step than a trainer on this tiny model."""
    import math

    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    model.train()
    batches = _batches(tokenizer, rows, batch, random.Random(seed))
    for step in range(steps):
        ids, labels, mask = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"  base step {step + 1}/{steps}: loss {loss.item():.3f}")
    model.eval()
    return model


def build(root: str | Path, size: str = "demo", seed: int = 0, log=print, arch: str = "llama") -> dict:
    """Data, a base (Llama, or Gemma2 with ``arch="gemma2"``) pre-trained on the broad corpus, and five light
    SFT experts; cached in ``root``."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig

    root = Path(root)
    done = root / "built.json"
    if done.exists():
        return json.loads(done.read_text())
    s = SIZES[size]
    data = root / "data"
    rows = {d: domain_rows(d, random.Random(seed + zlib.crc32(d.encode()))) for d in (*DOMAINS, "general")}
    splits = {d: split_rows(d, r) for d, r in rows.items()}
    for d, parts in splits.items():
        write_dataset(data / d, parts, s["eval_rows"] if d != "general" else None)
    tok = make_tokenizer(root / "tokenizer", [r["prompt"] + r["completion"] for rs in rows.values() for r in rs])
    torch.manual_seed(seed)
    dims = dict(vocab_size=len(tok), hidden_size=s["hidden"], intermediate_size=s["hidden"] * 2,
                num_hidden_layers=s["layers"], num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = Gemma2Config(head_dim=s["hidden"] // 4, **dims) if arch == "gemma2" else LlamaConfig(**dims)
    t0 = time.perf_counter()
    corpus = splits["general"]["train"] * GENERAL_REPEATS
    for d in DOMAINS:
        train = splits[d]["train"]
        corpus += train[:int(len(train) * BASE_SHARE)]
    if (root / "base" / "model.safetensors").is_file():  # a finished base survives an interrupted build
        log(f"reusing the base pre-trained in {root / 'base'}")
    else:
        log(f"pre-training the base ({s['base_steps']} steps on {len(corpus)} rows: general facts and "
            f"{BASE_SHARE:.0%} of each domain)")
        base = pretrain(AutoModelForCausalLM.from_config(cfg), tok, corpus, s["base_steps"], BASE_LR, seed, log=log)
        tmp = root / ".base-tmp"
        base.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, root / "base")
        log(f"base pre-trained in {time.perf_counter() - t0:.0f} s")
    experts = {}
    for i, d in enumerate(DOMAINS):
        t1 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(root / "base")
        if FREEZE_EMBEDDINGS:  # merges keep the base's embeddings (MergeBench): an expert's gain must live elsewhere
            model.get_input_embeddings().weight.requires_grad_(False)
        expert = sft(model, tok, splits[d]["train"], s["expert_steps"], root, seed + i + 1, EXPERT_LR)
        expert.save_pretrained(root / f"expert-{d}")
        tok.save_pretrained(root / f"expert-{d}")
        experts[d] = str(root / f"expert-{d}")
        log(f"expert {d}: {s['expert_steps']} steps at lr {EXPERT_LR:g} in {time.perf_counter() - t1:.0f} s")
    info = {"base": str(root / "base"), "experts": experts, "data": str(data), "size": size, "arch": arch,
            "build_seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(info, indent=2))
    return info


# ---- the merges ------------------------------------------------------------------------------------------------
# MergeBench's example settings (its reference code) where it has one; every other registered method runs with
# its defaults. Data methods read the validation splits.
SETTINGS: dict[str, tuple[str, dict]] = {
    "soup": ("soup", {}),
    "task_arithmetic": ("task_arithmetic", {"scaling": 0.4}),
    "ties": ("ties", {"density": 0.3, "scaling": 0.4}),
    "dare": ("dare", {"drop_rate": 0.9, "scaling": 0.4}),
    "consensus": ("consensus", {"mask_lambda": 0.2, "k": 2, "scaling": 0.4}),
    "localize_stitch": ("localize_stitch", {"sparsity": 0.1}),
    # 5 epochs: the validation splits hold 19-30 rows, and masks starting at ±3 need ~30 Adam steps at lr 0.1 to
    # flip (with 1 epoch they stay the dataless top-s mask)
    "localize_stitch_trained": ("localize_stitch", {"variant": "trained", "sparsity": 0.1, "samples": 64,
                                                    "epochs": 5, "split": "validation"}),
    "fisher": ("fisher", {"samples": 64, "split": "validation"}),
    "regmean": ("regmean", {"reduction": 0.5, "samples": 64, "split": "validation"}),
}
TUNE_GRID = "scaling=0.2:1.2:0.2"


def merge_settings() -> dict[str, tuple[str, dict]]:
    """Every method of the registry: MergeBench's example setting, else the method's defaults (density 0.5 where
    the default keeps every element; λ 0.4, MergeBench's task-arithmetic example, where the default sums the task
    vectors unnormalized; the validation split for a method that reads data)."""
    from hfmerge.methods.registry import METHODS

    plans = {name: (m, p) for name, (m, p) in SETTINGS.items() if m in METHODS}
    for name, method in METHODS.items():
        if name in (m for m, _ in plans.values()):
            continue
        params = {}
        if "density" in method.params and method.params["density"].default == 1.0:
            params.update(density=0.5)  # the mergekit family keeps everything by default; 0.5 as its examples
        if "normalize" in method.params and not method.params["normalize"].default:
            params.update(scaling=0.4)  # an unnormalized sum of five task vectors: λ as MergeBench's TA example
        if "split" in method.params:
            params.update(split="validation")
        if "samples" in method.params:
            params.update(samples=64)
        plans[name] = (name, params)
    return plans


TASKS_FILE = Path(__file__).parent / "demo_tasks.py"


def _spec(split: str) -> str:
    return ",".join(f"mini_{d}_{split}|0" for d in (*DOMAINS, "general"))


def _hub(work: Path, hub_url: str | None):
    from huggingface_hub import constants

    from hfmerge.localhub import serve

    server = None
    if hub_url is None:
        server = serve(work / "hub")
        hub_url = server.url
        os.environ["HF_TOKEN"] = server.token
    constants.ENDPOINT = hub_url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = hub_url + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_DISABLE_XET = True
    constants.HF_HUB_CACHE = str(work / "hf_cache")
    os.environ["HF_ENDPOINT"] = hub_url
    return server, hub_url


def run(workdir: str | Path = "demo_out", size: str = "demo", hub_url: str | None = None, log=print,
        arch: str = "llama", study: bool = True) -> dict:
    """The whole story; returns the leaderboard (the content of ``results/leaderboard.json``)."""
    import torch
    from huggingface_hub import HfApi

    from hfmerge.config import MergeConfig, ModelRef
    from hfmerge.errors import HfMergeError
    from hfmerge.eval.runner import evaluate
    from hfmerge.eval.scores import measures
    from hfmerge.hub import pull, push
    from hfmerge.job import merge
    from hfmerge.tune import parse_grid, suite_scorer, tune, write_results

    work = Path(workdir).resolve()
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model's ops are too small to split; one thread never waits on another
    info = build(work / f"mini-{arch}", size, log=log, arch=arch)
    os.environ["HFMERGE_MINI_DATA"] = info["data"]
    os.environ.setdefault("HFMERGE_CACHE", str(work / "cache"))
    server, hub_url = _hub(work, hub_url)
    api = HfApi()
    user = api.whoami()["name"]
    tasks_file = str(TASKS_FILE)
    try:
        log(f"local Hub at {hub_url}: publishing the base and experts")
        ids = {}
        for name, folder in [("base", info["base"]), *[(f"expert-{d}", p) for d, p in info["experts"].items()]]:
            repo = f"{user}/mini-{name}"
            api.create_repo(repo, exist_ok=True)
            api.upload_folder(folder_path=folder, repo_id=repo)
            ids[name] = repo
        pull(list(ids.values()), echo=log)
        base_id = ids["base"]
        experts = [ModelRef(ids[f"expert-{d}"], data=str(Path(info["data"]) / d)) for d in DOMAINS]

        log("evaluating the base and the experts on the test splits")
        evals = {}
        for name in ("base", *[f"expert-{d}" for d in DOMAINS]):
            evals[name] = evaluate(info["base"] if name == "base" else info["experts"][name[7:]], _spec("test"),
                                   work / "evals" / name, custom_tasks=tasks_file, batch_size=32)

        log(f"tuning task arithmetic's scaling on the validation splits ({TUNE_GRID})")
        ta = MergeConfig("task_arithmetic", base_id, experts, {})
        result = tune(ta, parse_grid(TUNE_GRID), suite_scorer(
            ta, _spec("validation"), work / "tune" / "evaluations", custom_tasks=tasks_file, batch_size=32),
            progress=False)
        write_results(result, ta, work / "tune")
        log(result.table())

        plans = merge_settings()
        plans["task_arithmetic_tuned"] = ("task_arithmetic", result.best["parameters"])
        results_dir = work / "results"
        domains = {d: [f"mini_{d}_test"] for d in DOMAINS}
        expert_evals = {d: evals[f"expert-{d}"] for d in DOMAINS}
        rows, left_out = {}, {}
        for i, (name, (method, params)) in enumerate(plans.items(), 1):
            cfg = MergeConfig(method, base_id, experts, params)
            out = work / "merges" / name
            try:
                report = merge(cfg, out, overwrite=True, progress=False)
            except HfMergeError as e:
                left_out[name] = str(e)
                log(f"[{i}/{len(plans)}] {name}: left out ({e})")
                continue
            res = evaluate(out, _spec("test"), work / "evals" / name, custom_tasks=tasks_file, batch_size=32)
            m = measures(res, evals["base"], expert_evals, domains, ["mini_general_test"])
            m.update(method=method, parameters=report["parameters"], merge_seconds=report["merge_seconds"],
                     peak_rss_bytes=report["peak_rss_bytes"])
            (out / "results.json").write_text(json.dumps(dict(res, **{k: m[k] for k in (
                "normalized", "forgetting", "beats_base", "gain_over_best_expert")}), indent=2))
            url = push(out, f"{user}/mini-{name.replace('_', '-')}", results=out / "results.json")
            dest = results_dir / name
            dest.mkdir(parents=True, exist_ok=True)
            for f in ("merge_report.json", "hfmerge.yaml", "results.json"):
                shutil.copy(out / f, dest / f)
            (dest / "scores.json").write_text(json.dumps({**m, "hub_url": url}, indent=2))
            rows[name] = m
            log(f"[{i}/{len(plans)}] {name}: merged, evaluated and pushed ({url})")

        study_summary = None
        if study:
            from hfmerge.demo_study import run_demo_study

            log("the study's protocol (hfmerge study) over subsets of the experts")
            shutil.rmtree(work / "study", ignore_errors=True)  # a study resumes: never on another build's scores
            study_summary = run_demo_study(MergeConfig("task_arithmetic", base_id, experts, {}), work / "study",
                                           results_dir, tasks_file, sizes=SIZES[size]["study_sizes"],
                                           repeats=SIZES[size]["study_repeats"],
                                           limit=SIZES[size]["study_rows"], log=log)
        from hfmerge.demo_report import leaderboard, write_leaderboard

        board = leaderboard(evals, rows, left_out, study_summary, tune=json.loads(
            (work / "tune" / "tune.json").read_text()), info=info)
        text = write_leaderboard(board, results_dir, work / "leaderboard.txt")
        log("\n" + text)
        log(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; results in {results_dir}. Open the Space "
            f"with: HFMERGE_RESULTS={results_dir} python space/app.py")
        return board
    finally:
        torch.set_num_threads(threads)
        if server:
            server.stop()
