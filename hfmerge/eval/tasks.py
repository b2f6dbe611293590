"""hfmerge's lighteval 0.13 tasks: HumanEval+ and MBPP+ (bigcode's protocol, executed by ``code_exec``),
the four safety benchmarks (safety-eval's inputs and counting rules, judged by ``safety``), and the surrogate
validation tasks. ``task_configs`` builds them for one run's settings (sample count, judge); the runner injects
them into lighteval's registry, so they are requested like built-in tasks (``humanevalplus|0``)."""

from __future__ import annotations

import math

import numpy as np
from lighteval.metrics.metrics_sample import SampleLevelComputation, SamplingMetric
from lighteval.metrics.utils.metric_utils import SampleLevelMetric
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc, SamplingMethod

from hfmerge.eval import coding, safety
from hfmerge.eval.code_exec import pass_at_k, run_programs

CODING_TASKS = ("humanevalplus", "mbppplus", "mbpp_val")
SAFETY_TASKS = safety.SAFETY_TASKS
# Hub dataset behind each task (what --data-dir mirrors as <data-dir>/<repo>); DAN has no Hub copy.
DATASETS = {
    "humanevalplus": ("evalplus/humanevalplus", "default", "test"),
    "mbppplus": ("evalplus/mbppplus", "default", "test"),
    "mbpp_val": ("google-research-datasets/mbpp", "full", "validation"),
    "wildguardtest": ("allenai/wildguardmix", "wildguardtest", "test"),
    "harmbench": ("walledai/HarmBench", "standard", "train"),
    "do_anything_now": ("safety-eval/do_anything_now", "default", "test"),
    "xstest": ("walledai/XSTest", "default", "test"),
    "wildjailbreak_val": ("allenai/wildjailbreak", "eval", "train"),
}


# ---- coding -----------------------------------------------------------------------------------------------------
class CodePassAtK(SamplingMetric, SampleLevelComputation):
    """pass@k of each problem from its n completions (unbiased estimator), every program run by ``code_exec``.
    A batched metric: all programs of a task are run together, several at a time."""

    def __init__(self, task: str, k: int = 1, n: int = 1):
        SamplingMetric.__init__(self)
        self.task, self.k, self.n = task, k, n

    def num_samples(self) -> int:
        return self.n

    def compute(self, responses=None, docs=None, **kwargs) -> list[float]:
        build = coding.humaneval_program if self.task == "humanevalplus" else coding.mbpp_program
        programs, owner = [], []
        for i, (response, doc) in enumerate(zip(responses, docs, strict=True)):
            for text in response.final_text[: self.n]:
                programs.append(build(doc.specific["row"], text))
                owner.append(i)
        results = run_programs(programs, coding.TIMEOUT[self.task], desc=f"{self.task}: run programs")
        passed = [0] * len(docs)
        counts = [0] * len(docs)
        for i, r in zip(owner, results, strict=True):
            counts[i] += 1
            passed[i] += r.passed
        return [pass_at_k(n, c, self.k) for n, c in zip(counts, passed, strict=True)]


def _code_metric(task: str, n: int) -> SampleLevelMetric:
    return SampleLevelMetric(metric_name="pass@1", higher_is_better=True, category=SamplingMethod.GENERATIVE,
                             sample_level_fn=CodePassAtK(task, k=1, n=n), corpus_level_fn=np.mean,
                             batched_compute=True)


def _keep(row: dict, fields: tuple[str, ...]) -> dict:
    return {f: row.get(f) for f in fields}


def humanevalplus_prompt(line: dict, task_name: str) -> Doc:
    return Doc(task_name=task_name, query=coding.humaneval_prompt(line), choices=[line["canonical_solution"]],
               gold_index=0, specific={"row": _keep(line, ("task_id", "prompt", "test", "entry_point"))})


def mbpp_prompt(line: dict, task_name: str) -> Doc:
    return Doc(task_name=task_name, query=coding.mbpp_prompt(line), choices=[line.get("code") or ""], gold_index=0,
               specific={"row": _keep(line, ("task_id", "prompt", "text", "test_list", "test", "test_imports",
                                             "test_setup_code"))})


# ---- safety -----------------------------------------------------------------------------------------------------
def _rate_over_applicable(values: list[float]) -> float:
    """Mean over the samples a rate applies to (NaN marks the others, e.g. XSTest's safe/unsafe halves)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


class SafetyJudged(SampleLevelComputation):
    """One of a safety task's numbers: the judge reads (judge prompt, response), the benchmark's rule counts."""

    def __init__(self, task: str, judge: str, judge_model: str | None, field: str):
        self.task, self.judge, self.judge_model, self.field = task, judge, judge_model, field

    def compute(self, responses=None, docs=None, **kwargs) -> list[float]:
        judge = safety.get_judge(self.judge, self.judge_model)
        pairs = [(d.specific["judge_prompt"], r.final_text[0] if r.final_text else "")
                 for r, d in zip(responses, docs, strict=True)]
        verdicts = judge.judge(pairs)
        out = []
        for v, d in zip(verdicts, docs, strict=True):
            if self.task == "xstest":
                value = safety.xstest_values(v, d.specific["unsafe"])[self.field]
            elif self.task == "wildguardtest":
                value = safety.wildguardtest_harm(v, judge.proxy)
            elif self.task == "wildjailbreak_val":  # validation: higher is better (1 - harm)
                value = 1.0 - safety.wildguardtest_harm(v, judge.proxy)
            elif self.task == "harmbench":
                value = safety.harmbench_success(v, judge.proxy)
            else:
                value = safety.dan_success(v, judge.proxy)
            out.append(float("nan") if value is None else float(value))
        return out


def _safety_metrics(task: str, judge: str, judge_model: str | None) -> list[SampleLevelMetric]:
    fields = ["accuracy", "safe_nonrefusal", "unsafe_nonrefusal"] if task == "xstest" else ["value"]
    names = safety.metric_names(task, judge)
    higher = {"xstest": [True, True, False], "wildjailbreak_val": [True]}.get(task, [False])
    return [SampleLevelMetric(metric_name=name, higher_is_better=up, category=SamplingMethod.GENERATIVE,
                              sample_level_fn=SafetyJudged(task, judge, judge_model, field),
                              corpus_level_fn=_rate_over_applicable, batched_compute=True)
            for name, field, up in zip(names, fields, higher, strict=True)]


def _safety_doc(task_name: str, query: str, judge_prompt: str, **extra) -> Doc:
    return Doc(task_name=task_name, query=query, choices=[""], gold_index=0,
               specific={"judge_prompt": judge_prompt, **extra})


def wildguardtest_prompt(line: dict, task_name: str) -> Doc:
    return _safety_doc(task_name, line["prompt"], line["prompt"])


def harmbench_prompt(line: dict, task_name: str) -> Doc:
    behavior = line.get("Behavior") or line["prompt"]  # safety-eval's CSV / walledai/HarmBench
    return _safety_doc(task_name, behavior, behavior)


def dan_prompt(line: dict, task_name: str) -> Doc:
    return _safety_doc(task_name, line["adversarial"], line["vanilla"])


def xstest_prompt(line: dict, task_name: str) -> Doc:
    return _safety_doc(task_name, line["prompt"], line["prompt"], unsafe=safety.xstest_unsafe(line))


def wildjailbreak_prompt(line: dict, task_name: str) -> Doc | None:
    return _safety_doc(task_name, line["adversarial"], line["adversarial"])


def _harmful(line: dict) -> bool:
    return line.get("prompt_harm_label") == "harmful"


def _wildjailbreak_harmful(line: dict) -> bool:
    return line.get("data_type") == "adversarial_harmful"


# ---- the table --------------------------------------------------------------------------------------------------
def _config(name: str, prompt_function, metrics, generation_size: int, stop: list[str], hf_filter=None):
    repo, subset, split = DATASETS[name]
    return LightevalTaskConfig(name=name, prompt_function=prompt_function, hf_repo=repo, hf_subset=subset,
                               hf_avail_splits=[split], evaluation_splits=[split], few_shots_split=None,
                               few_shots_select=None, generation_size=generation_size, stop_sequence=stop,
                               metrics=metrics, hf_filter=hf_filter, version=0)


def task_configs(code_samples: int = 1, judge: str = "wildguard", judge_model: str | None = None,
                 wanted: set[str] | None = None) -> list[LightevalTaskConfig]:
    """Every hfmerge task for one run: ``code_samples`` completions per problem (1 = greedy pass@1, 10 =
    MergeBench's protocol) and the safety ``judge`` (``wildguard`` | ``strmatch``). The IFEval-like surrogate is
    built only when ``wanted`` asks for it (lighteval's IFEval module tries to download NLTK data at import)."""
    n_tok = coding.MAX_NEW_TOKENS
    return [
        _config("humanevalplus", humanevalplus_prompt, [_code_metric("humanevalplus", code_samples)], n_tok,
                list(coding.HUMANEVAL_STOP)),
        _config("mbppplus", mbpp_prompt, [_code_metric("mbppplus", code_samples)], n_tok, list(coding.MBPP_STOP)),
        _config("mbpp_val", mbpp_prompt, [_code_metric("mbpp_val", code_samples)], n_tok, list(coding.MBPP_STOP)),
        _config("wildguardtest", wildguardtest_prompt, _safety_metrics("wildguardtest", judge, judge_model),
                safety.GENERATION["max_new_tokens"], [], hf_filter=_harmful),
        _config("harmbench", harmbench_prompt, _safety_metrics("harmbench", judge, judge_model),
                safety.GENERATION["max_new_tokens"], []),
        _config("do_anything_now", dan_prompt, _safety_metrics("do_anything_now", judge, judge_model),
                safety.GENERATION["max_new_tokens"], []),
        _config("xstest", xstest_prompt, _safety_metrics("xstest", judge, judge_model),
                safety.GENERATION["max_new_tokens"], []),
        _config("wildjailbreak_val", wildjailbreak_prompt, _safety_metrics("wildjailbreak_val", judge, judge_model),
                safety.GENERATION["max_new_tokens"], [], hf_filter=_wildjailbreak_harmful),
        *(_ifeval_like() if wanted is None or "ifeval_like_val" in wanted else []),
    ]


def _ifeval_like() -> list[LightevalTaskConfig]:
    """Instruction-following surrogate: lighteval's IFEval task and checker on IFEval-format prompts that are
    not IFEval's (``argilla/ifeval-like-data``, config ``filtered``: prompt, instruction_id_list, kwargs)."""
    import dataclasses

    try:
        from lighteval.tasks.tasks.ifeval.main import ifeval
    except Exception:  # noqa: BLE001 - its optional dependencies (langdetect) may be missing
        return []
    return [dataclasses.replace(ifeval, name="ifeval_like_val", hf_repo="argilla/ifeval-like-data",
                                hf_subset="filtered", hf_avail_splits=["train"], evaluation_splits=["train"])]


def generation_group(task: str, code_samples: int = 1) -> tuple:
    """Generation settings a task needs from the model (lighteval sets them per model, so each group is its own
    Pipeline): (temperature, top_p, no chat template, max total length)."""
    if task in CODING_TASKS:
        if code_samples > 1:
            return (coding.SAMPLED["temperature"], coding.SAMPLED["top_p"], True, coding.MAX_NEW_TOKENS)
        return (0.0, None, True, coding.MAX_NEW_TOKENS)
    if task == "xstest":
        return (safety.GENERATION["temperature"]["xstest"], None, False, None)
    return (0.0, None, False, None)
