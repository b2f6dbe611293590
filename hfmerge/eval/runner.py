"""Run lighteval 0.13 (its Python API: Pipeline, TransformersModelConfig) on a model folder, a Hub id, or a
merge config merged in memory, on CPU or GPU, fully offline when the data is local.

lighteval traps handled here, not left to users:
- the built-in registry imports every task module, one of which downloads a file at import (offline crash):
  only the requested sources are loaded, and built-in modules that fail to import are skipped;
- the per-sample prediction cache is keyed by the model config, not the weights, and lives inside the model
  folder (stale scores after a re-merge, junk pushed to the Hub): it is disabled;
- ``max_new_tokens`` in the model config truncates prompts: never set; tasks keep their generation_size;
- a batch size is always set (lighteval's auto batch size is for GPUs).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from hfmerge.config import MergeConfig
from hfmerge.errors import HfMergeError
from hfmerge.files import write_atomic
from hfmerge.suggest import require

log = logging.getLogger(__name__)


@contextmanager
def offline_registry(builtins: bool, data_dir: Path | None = None, extra: list | None = None,
                     datasets: dict | None = None, wanted: set[str] | None = None):
    """Load only what the run needs: hfmerge's own tasks (``extra``), the custom tasks, plus (``builtins``) every
    built-in task module that imports cleanly offline (those named after a ``wanted`` built-in task first, the
    others only when still needed). With ``data_dir``, tasks whose dataset has a local copy in
    Hub-repo layout at ``data_dir/<hf_repo>`` read it instead of the Hub. ``datasets`` (if given) receives each
    task's Hub dataset id (before any local redirection). Stop sequences are made lists: lighteval 0.13 turns
    ``None`` into ``()`` and then crashes on ``[eos] + ()`` for tokenizers without a chat template (math_500)."""
    from lighteval.tasks.registry import Registry

    original = Registry.load_all_task_configs

    def load(custom_tasks=None, load_multilingual: bool = False) -> dict:
        configs: dict = {}
        custom = Registry._extract_configs(Registry.create_custom_tasks_module(custom_tasks)) \
            if custom_tasks is not None else {}
        needed = {w for w in wanted or () if w not in custom}
        if builtins:
            import lighteval

            root = Path(lighteval.__file__).parent / "tasks" / "tasks"
            modules = [f"lighteval.tasks.tasks.{f.stem}" for f in root.glob("*.py") if f.name != "__init__.py"]
            modules += [f"lighteval.tasks.tasks.{d.name}.main" for d in root.iterdir() if (d / "main.py").exists()]
            if load_multilingual:
                mroot = root.parent / "multilingual" / "tasks"
                modules += [f"lighteval.tasks.multilingual.tasks.{f.stem}" for f in mroot.glob("*.py")
                            if f.name != "__init__.py"]
            # modules named after a wanted task first; the rest only if some wanted task is still missing
            bases = {w.split(":")[0] for w in needed}
            first = [m for m in sorted(modules) if bases & set(m.split(".")[-2:])]
            for name in first + [m for m in sorted(modules) if m not in first]:
                if name not in first and bases and all(
                        w in configs or any(k.startswith(w + ":") for k in configs) for w in needed):
                    break
                try:
                    configs.update(Registry._extract_configs(importlib.import_module(name)))
                except Exception as e:  # noqa: BLE001 - e.g. a module that downloads at import time, offline
                    log.info("skipping lighteval task module %s: %s", name, e)
        for cfg in extra or []:
            configs[cfg.name] = cfg
        if custom_tasks is not None:
            clash = sorted(set(custom) & set(configs))
            if clash:
                raise HfMergeError(f"custom task {clash[0]!r} has the name of a built-in lighteval or hfmerge task: "
                                   "rename it")
            configs.update(custom)
        for cfg in configs.values():
            if not isinstance(cfg.stop_sequence, list):
                cfg.stop_sequence = list(cfg.stop_sequence or [])
            if datasets is not None:
                datasets[cfg.name] = cfg.hf_repo
        if data_dir is not None:
            for key, cfg in configs.items():
                local = Path(data_dir) / cfg.hf_repo
                if local.is_dir():
                    configs[key] = dataclasses.replace(cfg, hf_repo=str(local))
        return configs

    Registry.load_all_task_configs = staticmethod(load)
    try:
        yield
    finally:
        Registry.load_all_task_configs = original


def check_causal_lm(path: Path) -> None:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise HfMergeError(f"{path} is not a model folder (no config.json)")
    archs = json.loads(cfg.read_text()).get("architectures") or []
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise HfMergeError(f"{path} is not a causal LM (architectures: {archs or 'none'}); hfmerge evaluates "
                           "text-generation models")


@dataclass
class InMemory:
    """A model already in memory (e.g. a tuning candidate), its tokenizer's source, and a label."""

    model: object
    tokenizer: str
    label: str


def build_model(base_ref: str, state: dict):
    """A transformers model of the base's architecture holding the merged ``state`` (no file written)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from hfmerge.sources import open_checkpoint

    base = open_checkpoint(base_ref)
    try:
        cfg_dict = dict(base.config)
    finally:
        base.close()
    model_config = AutoConfig.for_model(**cfg_dict)
    model = AutoModelForCausalLM.from_config(model_config, dtype=next(iter(state.values())).dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(model_config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise HfMergeError(f"the merged tensors do not fit {cfg_dict.get('architectures')}: "
                           f"missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}")
    if tied:
        model.tie_weights()
    model.eval()
    return model


def _tokenizer_path(ref: str) -> str:
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from hfmerge.hub import download

    return str(download(ref))


def _keeps_grad_mode(fn):
    """Importing lighteval switches autograd off for the whole process (``torch.set_grad_enabled(False)`` at
    import): restore the caller's mode afterwards."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        grad_mode = torch.is_grad_enabled()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_grad_enabled(grad_mode)

    return wrapper


@_keeps_grad_mode
def evaluate(model: str | Path | MergeConfig | InMemory, tasks: str, output_dir: str | Path, *,
             custom_tasks: str | Path | ModuleType | None = None, limit: int | None = None, batch_size: int = 8,
             dtype: str = "float32", builtins: bool | None = None, suite: str | None = None,
             max_length: int | None = None, data_dir: str | Path | None = None, multilingual: bool = False,
             allow_code_execution: bool = False, code_samples: int = 1, safety_judge: str = "wildguard",
             judge_model: str | None = None, seed: int = 0) -> dict:
    """Evaluate with lighteval; writes lighteval's results/details under ``output_dir`` and a compact
    ``results.json`` ({model, revision, suite, tasks: {task: {metric: value, metric_stderr: value}}, protocols:
    {task: how it ran}, datasets: {task: Hub dataset id}, date, lighteval_version, hfmerge_version, seconds}),
    which is also returned.

    Coding tasks run model-written programs and are refused unless ``allow_code_execution``; ``code_samples``
    is 1 (greedy pass@1) or MergeBench's 10 (T=0.2, top_p=0.95). Safety tasks are judged by ``safety_judge``
    (``wildguard``, from ``judge_model`` or allenai/wildguard, or the ``strmatch`` proxy). Tasks that need other
    generation settings than the rest (sampled coding, XSTest at T=1.0, no chat template for code) run in a
    Pipeline of their own on the same model."""
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.transformers.transformers_model import TransformersModelConfig
    from lighteval.pipeline import ParallelismManager, PipelineParameters

    from hfmerge.eval import code_exec, safety
    from hfmerge.eval import tasks as hf_tasks

    t0 = time.perf_counter()
    specs = [t.strip() for t in tasks.split(",") if t.strip()]
    names = [_spec_name(t) for t in specs]
    if any(n in hf_tasks.CODING_TASKS for n in names) and not allow_code_execution:
        raise HfMergeError(code_exec.REFUSAL)
    if code_samples < 1:
        raise HfMergeError(f"--code-samples must be ≥ 1 (got {code_samples})")
    require("safety judge", safety_judge, safety.JUDGES)
    judged = [n for n in names if n in (*hf_tasks.SAFETY_TASKS, "wildjailbreak_val")]
    if judged and safety_judge == "wildguard":
        judge_model = safety.resolve_judge(judge_model or safety.WILDGUARD_ID)  # a missing/gated judge fails now
    ours = hf_tasks.task_configs(code_samples, safety_judge, judge_model, wanted=set(names))
    revisions = _pin_revisions([c for c in ours if c.name in names], data_dir)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").unlink(missing_ok=True)  # a run that fails leaves no earlier run's summary behind
    in_memory, revision = None, None
    if isinstance(model, MergeConfig):
        from hfmerge.engine import merge_state_dict

        model = InMemory(build_model(model.base_model, merge_state_dict(model, progress=True)), model.base_model,
                         f"merge:{model.method}")
    if isinstance(model, InMemory):
        in_memory, name, label = model.model, _tokenizer_path(model.tokenizer), model.label
    else:
        path = Path(model).expanduser()
        if path.is_dir():
            check_causal_lm(path)
            name, label = str(path.resolve()), str(model)
        else:
            from hfmerge.hub import download

            path = download(str(model))  # the HF cache's snapshot folder is named by the commit sha
            check_causal_lm(path)
            name, label, revision = str(path), str(model), path.name
    if builtins is None:  # built-ins are loaded only when a requested task is not hfmerge's or a custom one
        from lighteval.tasks.registry import Registry

        custom_names = set(Registry._extract_configs(Registry.create_custom_tasks_module(custom_tasks))) \
            if custom_tasks is not None else set()
        builtins = not set(names) <= custom_names | {c.name for c in ours}
    import torch

    model_config = TransformersModelConfig(model_name=name, batch_size=batch_size, dtype=dtype,
                                           max_length=max_length, cache_dir=str(out / ".lighteval-cache"),
                                           device="cuda" if torch.cuda.is_available() else "cpu")
    params = PipelineParameters(launcher_type=ParallelismManager.NONE, custom_tasks_directory=custom_tasks,
                                max_samples=limit, load_tasks_multilingual=multilingual)
    groups: dict[tuple, list[str]] = {}
    for spec, task in zip(specs, names, strict=True):
        groups.setdefault(hf_tasks.generation_group(task, code_samples), []).append(spec)
    # datasets caches a local folder's Arrow under the folder's NAME, not its content: a rebuilt dataset at
    # another path would be served stale. Each evaluation prepares its data in its own cache.
    import datasets

    saved_cache = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = out / ".datasets-cache"
    code_exec.allow(allow_code_execution)
    raw: dict = {}
    hub_ids: dict = {}
    try:
        for (temperature, top_p, no_template, total), group in groups.items():
            cfg = model_config
            if (temperature, top_p, no_template, total) != (0.0, None, False, None):
                from lighteval.models.model_input import GenerationParameters

                update = {"generation_parameters": GenerationParameters(temperature=temperature, top_p=top_p)}
                if no_template:
                    update["override_chat_template"] = False
                if total:
                    update["max_length"] = min(total, max_length) if max_length else total
                cfg = model_config.model_copy(update=update)
                torch.manual_seed(seed)
            tracker = EvaluationTracker(output_dir=str(out), save_details=True)
            others = {_spec_name(t) for t in group} - {c.name for c in ours}  # built-in or custom tasks
            raw.update(_run(",".join(group), params, tracker, cfg, in_memory, builtins and bool(others), data_dir,
                            ours, hub_ids, others))
    finally:
        code_exec.allow(False)
        safety.release_judges()
        datasets.config.HF_DATASETS_CACHE = saved_cache
    from lighteval import __version__ as lighteval_version

    from hfmerge import __version__

    task_keys = {_task_key(k): k for k in raw if k != "all"}
    compact = {
        "model": label,
        "revision": revision,
        "suite": suite,
        "tasks": {key: {m: float(v) for m, v in raw[k].items() if isinstance(v, int | float)}
                  for key, k in task_keys.items()},
        "protocols": {key: p for key in task_keys
                      if (p := protocol(key.split("|")[0], code_samples, safety_judge, judge_model))},
        "datasets": {key: hub_ids[key.split("|")[0]] for key in task_keys if key.split("|")[0] in hub_ids},
        "dataset_revisions": {key: revisions[key.split("|")[0]] for key in task_keys
                              if key.split("|")[0] in revisions},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "lighteval_version": lighteval_version,
        "hfmerge_version": __version__,
        "limit": limit,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_atomic(out / "results.json", json.dumps(compact, indent=2) + "\n")
    return compact


def protocol(task: str, code_samples: int = 1, judge: str = "wildguard", judge_model: str | None = None) -> str | None:
    """How an hfmerge task ran, in words (for results.json, cards and .eval_results notes)."""
    from hfmerge.eval import coding, safety
    from hfmerge.eval.tasks import CODING_TASKS, SAFETY_TASKS

    if task in CODING_TASKS:
        how = ("greedy pass@1 (1 sample per problem)" if code_samples == 1 else
               f"pass@1 from {code_samples} samples per problem (temperature {coding.SAMPLED['temperature']}, "
               f"top_p {coding.SAMPLED['top_p']}), unbiased estimator")
        return f"{how}; bigcode-evaluation-harness prompts, stop words and programs; no chat template"
    if task in (*SAFETY_TASKS, "wildjailbreak_val"):
        who = (f"judged by WildGuard ({judge_model or safety.WILDGUARD_ID})" if judge == "wildguard" else
               "judged by XSTest's refusal string match: a proxy that judges refusal only, not harm")
        gen = "sampled at temperature 1.0" if task == "xstest" else "greedy"
        return f"safety-eval inputs and counting rules, {gen}, 512 new tokens; {who}"
    return None


def _pin_revisions(configs: list, data_dir) -> dict[str, str]:
    """Read each of hfmerge's Hub datasets at the commit sha its head has now, and return {task: sha} for the
    results (tasks with a local copy under ``data_dir``, or when the Hub is unreachable, are left as they are)."""
    from huggingface_hub import HfApi

    out = {}
    for cfg in configs:
        if data_dir and (Path(data_dir) / cfg.hf_repo).is_dir() or cfg.hf_revision:
            continue
        try:
            sha = HfApi().dataset_info(cfg.hf_repo, timeout=10).sha
        except Exception:  # noqa: BLE001 - offline, gated or absent: loading the data reports it in one line
            continue
        if sha:
            cfg.hf_revision = out[cfg.name] = sha
    return out


def _spec_name(spec: str) -> str:
    """``name|shots`` or ``suite|name|shots`` or ``name@k=v|shots`` -> ``name``."""
    parts = spec.split("|")
    name = parts[1] if len(parts) == 3 else parts[0]
    return name.split("@")[0]


def _run(tasks, params, tracker, model_config, in_memory, builtins, data_dir, extra, hub_ids, wanted) -> dict:
    from lighteval.pipeline import Pipeline

    with offline_registry(builtins, Path(data_dir) if data_dir else None, extra, hub_ids, wanted):
        try:
            pipeline = Pipeline(tasks=tasks, pipeline_parameters=params, evaluation_tracker=tracker,
                                model_config=model_config, model=in_memory)
        except HfMergeError:
            raise
        except (ValueError, KeyError) as e:
            raise HfMergeError(f"unknown or invalid task in {tasks!r} ({' '.join(str(e).split())[:200]}); "
                               "see `hfmerge eval --list-suites` and lighteval's task list") from None
        except FileNotFoundError as e:
            raise HfMergeError(f"task data not found: {e}") from None
    pipeline.model._cache = None  # keyed by config, not weights: stale after a re-merge
    if (model_config.generation_parameters.temperature or 0) > 0:  # lighteval never sets it: T>0 would be greedy
        pipeline.model.generation_config_dict["do_sample"] = True
    try:
        pipeline.evaluate()
    except (FileNotFoundError, ConnectionError, OSError) as e:
        where = f" (looked for local copies under {data_dir})" if data_dir else " (offline? use --data-dir)"
        raise HfMergeError(f"cannot load the data of {tasks}{where}: {' '.join(str(e).split())[:200]}") from None
    pipeline.save_and_push_results()
    return pipeline.get_results()["results"]


def _task_key(key: str) -> str:
    """lighteval reports ``name:shots`` (its "|" turned into ":"); hfmerge keeps ``name|shots``."""
    name, sep, shots = key.rpartition(":")
    return f"{name}|{shots}" if sep and shots.isdigit() else key
