"""lighteval custom tasks for the tests: a loglikelihood multiple-choice task and a generative exact-match
task over data the tests write to $HFMERGE_TEST_EVAL_DATA (one folder per task, split-named jsonl)."""

import os

from lighteval.metrics.metrics import Metrics
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

DATA = os.environ.get("HFMERGE_TEST_EVAL_DATA", "/nonexistent")


def mcq_prompt(line: dict, task_name: str) -> Doc:
    return Doc(task_name=task_name, query=line["question"], choices=[f" {c}" for c in line["choices"]],
               gold_index=line["answer"])


def gen_prompt(line: dict, task_name: str) -> Doc:
    return Doc(task_name=task_name, query=line["prompt"], choices=[line["target"]], gold_index=0)


TASKS_TABLE = [
    LightevalTaskConfig(name="hfm_test_mcq", prompt_function=mcq_prompt, hf_repo=f"{DATA}/mcq", hf_subset="default",
                        metrics=[Metrics.loglikelihood_acc], hf_avail_splits=["test"], evaluation_splits=["test"],
                        few_shots_split=None, few_shots_select=None, generation_size=-1),
    LightevalTaskConfig(name="hfm_test_gen", prompt_function=gen_prompt, hf_repo=f"{DATA}/gen", hf_subset="default",
                        metrics=[Metrics.exact_match], hf_avail_splits=["test"], evaluation_splits=["test"],
                        few_shots_split=None, few_shots_select=None, generation_size=6, stop_sequence=["\n"]),
]
