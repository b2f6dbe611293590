"""Named evaluation suites: lighteval tasks with shots, the metric that counts, and the domain each serves.

They follow the MergeBench protocol as closely as lighteval 0.13 allows; the differences are listed in
``missing`` and in the README. ``--data-dir`` points a suite at local copies of its datasets (Hub layout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hfmerge.suggest import unknown

LANGS = {"fr": "fra", "es": "spa", "de": "deu", "ru": "rus"}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: list[str]  # lighteval specs "task|shots"
    domains: dict[str, list[str]] = field(default_factory=dict)  # domain -> task names (without shots)
    # task name -> metric that counts (default: first), or candidates in order (e.g. a judge's names, then its proxy's)
    metric: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    custom_tasks: str | None = None  # module with TASKS_TABLE
    multilingual: bool = False
    missing: str = ""
    lower_is_better: tuple[str, ...] = ()  # tasks whose metric counts as 1 - value in their domain's score
    code: bool = False  # runs model-written programs (needs --allow-code-execution)

    @property
    def spec(self) -> str:
        return ",".join(self.tasks)


_MULTI = [f"mlmm_{b}_{code}_cf{s}" for code in LANGS.values()
          for b, s in (("mmlu", ""), ("arc", ":challenge"), ("hellaswag", ""))]
_SAFETY = ["wildguardtest", "harmbench", "do_anything_now", "xstest"]
_SAFETY_METRIC = {"wildguardtest": ("harm_rate", "nonrefusal_rate_strmatch_proxy"),
                  "harmbench": ("asr", "nonrefusal_rate_strmatch_proxy"),
                  "do_anything_now": ("asr", "asr_strmatch_proxy"),
                  "xstest": ("accuracy", "accuracy_strmatch_proxy")}
SUITES: dict[str, Suite] = {
    "mergebench": Suite(
        "mergebench", "MergeBench's five domains: instruction, math, multilingual (lighteval), coding (bigcode's "
        "protocol, executed), safety (safety-eval's rules, judged)",
        ["ifeval|0", "gsm8k|8", "math_500|0", *[f"{t}|0" for t in _MULTI], "humanevalplus|0", "mbppplus|0",
         *[f"{t}|0" for t in _SAFETY]],
        domains={"instruction": ["ifeval"], "math": ["gsm8k", "math_500"], "multilingual": _MULTI,
                 "coding": ["humanevalplus", "mbppplus"], "safety": _SAFETY},
        metric={"ifeval": "prompt_level_strict_acc", "gsm8k": "extractive_match", "math_500": "extractive_match",
                "humanevalplus": "pass@1", "mbppplus": "pass@1", **_SAFETY_METRIC},
        multilingual=True, lower_is_better=("wildguardtest", "harmbench", "do_anything_now"), code=True,
        missing="GSM8K and MATH use lighteval's prompts (MATH-500 subset); M_MMLU/M_ARC/M_HellaSwag are lighteval's "
                "Okapi cloze tasks; coding defaults to greedy pass@1 (--code-samples 10 for MergeBench's protocol); "
                "DoAnythingNow has no Hub copy (--data-dir); the strmatch judge is a refusal-only proxy",
    ),
    "forgetting": Suite(
        "forgetting", "general knowledge kept from the base (MergeBench's forgetting benchmarks)",
        ["mmlu|5", "triviaqa|0", "squad_v2|0", "coqa|0", "pubmedqa|0", "wmt14:fr-en|0"],
        missing="wmt14:fr-en is defined but not registered in some lighteval 0.13 builds",
    ),
    "validation": Suite(
        "validation", "surrogate validation tasks for tuning, one per domain (never the test tasks; use --limit)",
        ["ifeval_like_val|0", "mmlu:college_mathematics|0", "mmlu:high_school_mathematics|0", "mbpp_val|0",
         "lambada:standard|0", "wildjailbreak_val|0"],
        domains={"instruction": ["ifeval_like_val"],
                 "math": ["mmlu:college_mathematics", "mmlu:high_school_mathematics"],
                 "coding": ["mbpp_val"], "multilingual": ["lambada:standard"], "safety": ["wildjailbreak_val"]},
        metric={"ifeval_like_val": "prompt_level_strict_acc", "mbpp_val": "pass@1",
                "wildjailbreak_val": ("safe_rate", "refusal_rate_strmatch_proxy")},
        code=True,
        missing="MergeBench's surrogates are IFEval-like data, MMLU-STEM, CoNaLa, LAMBADA and WildJailbreak: here "
                "argilla/ifeval-like-data, two MMLU math subjects, MBPP's validation split (executed, instead of "
                "CoNaLa), English LAMBADA and WildJailbreak's adversarial harmful eval prompts",
    ),
}


_MINI_TASKS = str(Path(__file__).parent.parent / "demo_tasks.py")
_MINI_DOMAINS = ("instruction", "math", "coding", "multilingual", "safety")
for _split in ("test", "validation"):
    SUITES["mini" if _split == "test" else "mini_validation"] = Suite(
        "mini" if _split == "test" else "mini_validation",
        f"the mini-MergeBench ({_split} splits; data folder from $HFMERGE_MINI_DATA, made by `hfmerge demo`)",
        [f"mini_{d}_{_split}|0" for d in (*_MINI_DOMAINS, "general")],
        domains={d: [f"mini_{d}_{_split}"] for d in _MINI_DOMAINS}, custom_tasks=_MINI_TASKS,
    )


def register(suite: Suite) -> None:
    """Add a suite (e.g. the mini-MergeBench's, defined with the tasks it generates)."""
    SUITES[suite.name] = suite


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise unknown("suite", name, SUITES)
    return SUITES[name]


def describe() -> str:
    lines = []
    for s in SUITES.values():
        lines.append(f"{s.name}: {s.description}")
        lines += [f"    {t}" for t in s.tasks]
        if s.missing:
            lines.append(f"    differences: {s.missing}")
    return "\n".join(lines)
