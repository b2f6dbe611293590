"""Examples for statistics: a dataset (local folder in Hub layout, jsonl/json/parquet file, or Hub id) turned
into tokenized prompt/response pairs, with the loss on the response only.

Field names follow MergeBench's ``*_val`` sets (instruction(+input)/output, query/response,
instruction/response, inputs/targets, prompt/response) and the prompt/completion layout of trl."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hfmerge.errors import HfMergeError
from hfmerge.suggest import require

FIELDS = [("prompt", "completion"), ("prompt", "response"), ("query", "response"), ("instruction", "output"),
          ("instruction", "response"), ("inputs", "targets"), ("question", "answer")]
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{prompt}\n\n### Response:\n")
FORMATS = ("plain", "alpaca", "chat")


@dataclass(frozen=True)
class Example:
    input_ids: torch.Tensor  # [T]
    labels: torch.Tensor  # [T], -100 on the prompt


def load_rows(data: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """Rows of a dataset: a local file or folder, or a Hub dataset id."""
    import datasets

    path = Path(data).expanduser()
    try:
        if path.is_file():
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
            if not kind:
                raise HfMergeError(f"{data}: unsupported data file type (use jsonl, json, parquet or csv)")
            ds = datasets.load_dataset(kind, data_files={split: str(path)}, split=split)
        else:
            ds = datasets.load_dataset(str(path) if path.exists() else data, split=split)
    except HfMergeError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the one line
        raise HfMergeError(f"cannot load data {data!r} (split {split}): {str(e).splitlines()[0]}") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return list(ds)


def pair(row: dict, origin: str) -> tuple[str, str]:
    for p, r in FIELDS:
        if p in row and r in row:
            prompt = str(row[p])
            if p == "instruction" and row.get("input"):
                prompt += "\n\n" + str(row["input"])
            return prompt, str(row[r])
    raise HfMergeError(f"{origin}: rows need prompt/response fields, one of "
                       + ", ".join(f"{p}/{r}" for p, r in FIELDS))


def tokenize(rows: list[dict], tokenizer, fmt: str = "plain", max_length: int = 512,
             origin: str = "data") -> list[Example]:
    """Prompt + response token ids; labels mask the prompt (and padding) with -100."""
    require("prompt format", fmt, FORMATS)
    out = []
    for row in rows:
        prompt, response = pair(row, origin)
        if fmt == "chat":
            if not tokenizer.chat_template:
                raise HfMergeError(f"{origin}: prompt format 'chat' needs a tokenizer with a chat template")
            p_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                  tokenize=True)
            if isinstance(p_ids, dict):
                p_ids = p_ids["input_ids"]
        else:
            text = ALPACA.format(prompt=prompt) if fmt == "alpaca" else prompt
            p_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            r_ids = [*r_ids, tokenizer.eos_token_id]
        ids = (list(p_ids) + list(r_ids))[:max_length]
        labels = ([-100] * len(p_ids) + list(r_ids))[:max_length]
        if any(label != -100 for label in labels):
            out.append(Example(torch.tensor(ids), torch.tensor(labels)))
    if not out:
        raise HfMergeError(f"{origin}: no usable examples (empty data, or prompts longer than {max_length} tokens)")
    return out
