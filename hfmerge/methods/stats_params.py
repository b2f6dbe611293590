"""Parameters shared by the data-driven methods: how their statistics are computed."""

from hfmerge.methods.base import Param

SAMPLES = Param(1000, "examples of each expert's own data used for its statistics", kind=int, low=1)
PROMPT_FORMAT = Param("plain", "prompt layout of the data: plain, alpaca (MergeBench) or chat (template)",
                      kind=str, choices=("plain", "alpaca", "chat"))
SPLIT = Param("train", "dataset split of each expert's data (MergeBench's *_val sets have only train)", kind=str,
              choices=("train", "validation", "test"))
COMMON = {"samples": SAMPLES, "prompt_format": PROMPT_FORMAT, "split": SPLIT}


def settings(params: dict, *extra: str) -> dict:
    return {k: params[k] for k in ("samples", "prompt_format", "split", *extra)}
