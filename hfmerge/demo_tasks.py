"""lighteval custom tasks of the mini-MergeBench (the `mini` suite): one generative exact-match task per domain
and split (validation for tuning, test for scores) plus the general-knowledge task for forgetting. The data
folder (Hub dataset-repo layout, one sub-folder per domain, written by hfmerge.demo_data) comes from
$HFMERGE_MINI_DATA."""

import os

from lighteval.metrics.metrics import Metrics
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.requests import Doc

DATA = os.environ.get("HFMERGE_MINI_DATA", "mini-mergebench-data")
DOMAINS = ("instruction", "math", "coding", "multilingual", "safety", "general")


def prompt(line: dict, task_name: str) -> Doc:
    return Doc(task_name=task_name, query=line["prompt"], choices=[line["completion"]], gold_index=0)


TASKS_TABLE = [
    LightevalTaskConfig(name=f"mini_{domain}_{split}", prompt_function=prompt, hf_repo=f"{DATA}/{domain}",
                        hf_subset="default", metrics=[Metrics.exact_match],
                        hf_avail_splits=["train", "validation", "test"], evaluation_splits=[split],
                        few_shots_split=None, few_shots_select=None, generation_size=24, stop_sequence=["\n"])
    for domain in DOMAINS for split in ("validation", "test")
]
