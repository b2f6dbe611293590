"""HumanEval+ and MBPP+ as bigcode-evaluation-harness runs them (the harness MergeBench used): prompts, stop
words, the cut of a completion and the program that is executed. Pure functions; lighteval wiring is in
``hfmerge.eval.tasks``, execution in ``hfmerge.eval.code_exec``.

- HumanEval+ (``evalplus/humanevalplus``): prompt = ``prompt.strip()``; program = prompt + cut completion +
  ``"\\n" + "\\n" + test + "\\n" + "check(entry_point)"``; timeout 20 s.
- MBPP+ (``evalplus/mbppplus``): prompt = ``'\"\"\"\\n' + description + '\\n' + test_list[0] + '\\n\"\"\"\\n'``
  (InCoder's format); program = prompt + cut completion + ``"\\n" + "\\n" + test``; timeout 10 s.
A completion is cut at the first occurrence of any stop word; the model never sees a chat template.
"""

from __future__ import annotations

from collections.abc import Iterable

HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>"]
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]
TIMEOUT = {"humanevalplus": 20.0, "mbppplus": 10.0, "mbpp_val": 10.0}
MAX_NEW_TOKENS = 512
SAMPLED = {"n": 10, "temperature": 0.2, "top_p": 0.95}  # MergeBench's protocol


def stop_cut(completion: str, stop_words: Iterable[str]) -> str:
    """The completion up to (not including) the earliest stop word (bigcode's ``stop_at_stop_token``)."""
    cut = len(completion)
    for word in stop_words:
        i = completion.find(word)
        if i != -1:
            cut = min(cut, i)
    return completion[:cut]


def humaneval_prompt(row: dict) -> str:
    return row["prompt"].strip()


def humaneval_program(row: dict, completion: str) -> str:
    candidate = humaneval_prompt(row) + stop_cut(completion, HUMANEVAL_STOP)
    return candidate + "\n" + "\n" + row["test"] + "\n" + f"check({row['entry_point']})"


def mbpp_prompt(row: dict) -> str:
    description = row.get("prompt") or row.get("text")  # MBPP+ / sanitized MBPP use "prompt", full MBPP "text"
    return f'"""\n{description}\n{row["test_list"][0]}\n"""\n'


def mbpp_tests(row: dict) -> str:
    """MBPP+ ships its tests ready to run in ``test``; plain MBPP has imports + ``test_list`` asserts."""
    if row.get("test"):
        return row["test"]
    setup = row.get("test_setup_code") or ""
    imports = "\n".join(row.get("test_imports") or [])
    return "\n".join(x for x in (imports, setup, *row["test_list"]) if x)


def mbpp_program(row: dict, completion: str) -> str:
    candidate = mbpp_prompt(row) + stop_cut(completion, MBPP_STOP)
    return candidate + "\n" + "\n" + mbpp_tests(row)
