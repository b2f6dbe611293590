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
    metric: dict[str, str] = field(default_factory=dict)  # task name -> metric that counts (default: first)
    custom_tasks: str | None = None  # module with TASKS_TABLE
    multilingual: bool = False
    missing: str = ""

    @property
    def spec(self) -> str:
        return ",".join(self.tasks)


_MULTI = [f"mlmm_{b}_{code}_cf{s}" for code in LANGS.values()
          for b, s in (("mmlu", ""), ("arc", ":challenge"), ("hellaswag", ""))]
SUITES: dict[str, Suite] = {
    "mergebench": Suite(
        "mergebench", "MergeBench's domain benchmarks available in lighteval",
        ["ifeval|0", "gsm8k|8", "math_500|0", *[f"{t}|0" for t in _MULTI]],
        domains={"instruction": ["ifeval"], "math": ["gsm8k", "math_500"], "multilingual": _MULTI},
        metric={"ifeval": "prompt_level_strict_acc", "gsm8k": "extractive_match", "math_500": "extractive_match"},
        multilingual=True,
        missing="coding (HumanEval+, MBPP+) and safety (WildGuardTest, HarmBench, DoAnythingNow, XSTest) have no "
                "lighteval 0.13 tasks; M_MMLU is evaluated on lighteval's Okapi subsets",
    ),
    "forgetting": Suite(
        "forgetting", "general knowledge kept from the base (MergeBench's forgetting benchmarks)",
        ["mmlu|5", "triviaqa|0", "squad_v2|0", "coqa|0", "pubmedqa|0", "wmt14:fr-en|0"],
        missing="wmt14:fr-en is defined but not registered in some lighteval 0.13 builds",
    ),
    "validation": Suite(
        "validation", "surrogate validation tasks for tuning (never the test tasks)",
        ["lambada:standard|0", "mmlu:college_mathematics|0", "mmlu:high_school_mathematics|0"],
        domains={"multilingual": ["lambada:standard"],
                 "math": ["mmlu:college_mathematics", "mmlu:high_school_mathematics"]},
        missing="IFEval-like instruction data, CoNaLa (coding) and WildJailbreak (safety) have no lighteval tasks",
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
            lines.append(f"    not covered: {s.missing}")
    return "\n".join(lines)
