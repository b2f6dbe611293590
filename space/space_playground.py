"""The Playground's backend: merge a small model family in memory and score it in seconds.

``PlaygroundBackend`` is the interface the app talks to (the mini-MergeBench can supply its own).
``LocalFamilyBackend`` is the default: a family folder (env HFMERGE_PLAYGROUND) holding

    base/                      the base model (transformers folder)
    expert-<domain>/ | <name>/ every other sub-folder with a config.json is an expert (prefix "expert-" dropped)
    tasks/<domain>.jsonl       optional task rows {"prompt", "completion"} per expert domain, and
    tasks/general.jsonl        optional rows for forgetting; the mini-MergeBench layout
                               data/<domain>/validation.jsonl (or test.jsonl) is read as well.

How it scores (honest, small, and *not* MergeBench's benchmarks):
- a model's score on a domain = the geometric mean probability it gives to the reference completion tokens
  given the prompt (exp of the mean token log-likelihood), at most ``max_rows`` rows per domain; exact match
  (greedy decoding reproduces every completion token, computed by teacher forcing) is reported alongside;
- normalized performance = mean over domains of merge score / that domain's expert score (MergeBench's measure,
  with this likelihood score in place of the benchmark metric);
- forgetting = merge score / base score on the general rows (100 % = nothing lost);
- without task files every expert's "domain" is a fixed English text (FALLBACK_TEXT) and general = the same
  text: the numbers then only say how close the merge stays to each expert's and the base's fit of that text.
Data-driven methods (fisher, regmean, trained Localize-and-Stitch) need data statistics and are not offered.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

FALLBACK_TEXT = [
    {"prompt": "the quick brown fox", "completion": " jumps over the lazy dog"},
    {"prompt": "two plus three equals", "completion": " five and six times seven is forty two"},
    {"prompt": "def add(a, b):", "completion": " return a + b"},
    {"prompt": "bonjour le monde,", "completion": " hola mundo, hallo welt"},
    {"prompt": "I cannot help with that request,", "completion": " but here is a safe alternative"},
]
METHODS = ("task_arithmetic", "ties", "dare", "consensus", "localize_stitch", "soup")
# Slider ranges where the method's own interval is open-ended or too wide for a playground.
SLIDER = {"scaling": (0.05, 2.0, 0.05), "density": (0.05, 1.0, 0.05), "drop_rate": (0.0, 0.95, 0.05),
          "mask_lambda": (0.0, 1.0, 0.05), "k": (1, 5, 1), "sparsity": (0.05, 1.0, 0.05)}
CHOICES = {"aggregate", "topk_scope"}
DEPLOYED_FAMILY = Path(__file__).resolve().parent / "playground"  # what `hfmerge space deploy` ships


class PlaygroundError(Exception):
    """A Playground run that cannot go on, with a sentence the visitor can act on."""


def _check(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise PlaygroundError(f"stopped: the {what} took longer than the Playground's time limit; try fewer "
                              "parameters moved at once, or again when the Space is less busy")


@dataclass
class Slider:
    name: str
    default: float | int | str
    help: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None


@dataclass
class PlaygroundResult:
    method: str
    parameters: dict
    norm_perf: float | None  # %
    forgetting: float | None  # %
    domains: dict[str, float] = field(default_factory=dict)  # merge score per domain, %
    normalized: dict[str, float] = field(default_factory=dict)  # merge / expert per domain, %
    exact_match: dict[str, float] = field(default_factory=dict)  # %
    merge_seconds: float = 0.0
    score_seconds: float = 0.0


class PlaygroundBackend(Protocol):
    """What the Playground tab needs. Errors are raised as exceptions with a one-line message."""

    def describe(self) -> str: ...  # markdown: what is merged and how it is scored

    def methods(self) -> dict[str, list[Slider]]: ...  # method -> its tunable parameters

    def reference_points(self) -> list[dict]: ...  # e.g. the base, on the same measures

    def merge_and_score(self, method: str, parameters: dict, deadline: float | None = None) -> PlaygroundResult:
        ...  # stops with PlaygroundError once time.monotonic() passes ``deadline``

    def models(self) -> list[str]: ...  # names generate() accepts ("base", experts, "last merge")

    def generate(self, model: str, prompt: str, max_new_tokens: int = 24, max_seconds: float | None = None) -> str:
        ...


def method_sliders(method: str, n_experts: int) -> list[Slider]:
    """The registry's parameters of ``method`` that make sense to move by hand."""
    from hfmerge.methods.registry import get_method

    out = []
    for name, p in get_method(method).params.items():
        if name in CHOICES and p.choices:
            out.append(Slider(name, p.default, p.help, choices=tuple(p.choices)))
        elif name in SLIDER:
            lo, hi, step = SLIDER[name]
            if name == "k":
                hi = max(1, n_experts)
            out.append(Slider(name, p.default if p.default is not None else lo, p.help, lo, hi, step))
    return out


def _rows(path: Path, limit: int) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if isinstance(r, dict) and isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str):
                rows.append({"prompt": r["prompt"], "completion": r["completion"]})
        if len(rows) >= limit:
            break
    return rows


def _task_file(root: Path, domain: str) -> Path | None:
    for p in (root / "tasks" / f"{domain}.jsonl", root / "data" / domain / "validation.jsonl",
              root / "data" / domain / "test.jsonl"):
        if p.is_file():
            return p
    return None


class LocalFamilyBackend:
    """The default backend over a local family folder (see the module docstring)."""

    def __init__(self, folder: str | Path, max_rows: int = 32):
        self.root = Path(folder).expanduser().resolve()
        if not (self.root / "base" / "config.json").is_file():
            raise ValueError(f"{self.root} has no base/ model folder (with config.json)")
        experts = sorted(p for p in self.root.iterdir()
                         if p.is_dir() and p.name != "base" and (p / "config.json").is_file())
        if not experts:
            raise ValueError(f"{self.root} has no expert folders next to base/")
        self.base = self.root / "base"
        self.experts = {p.name.removeprefix("expert-").removeprefix("expert_"): p for p in experts}
        files = {d: _task_file(self.root, d) for d in self.experts}
        self.with_tasks = all(files.values())
        if self.with_tasks:
            self.tasks = {d: _rows(f, max_rows) for d, f in files.items()}
        else:
            self.tasks = {d: FALLBACK_TEXT for d in self.experts}
        general = _task_file(self.root, "general")
        self.general = _rows(general, max_rows) if general else FALLBACK_TEXT
        self._lock = threading.Lock()
        self._models: dict[str, object] = {}
        self._tokenizer = None
        self._reference: dict[str, dict[str, float]] = {}
        self._last = None

    # -- models -----------------------------------------------------------------------------------------------
    def _load(self, name: str):
        import torch
        from transformers import AutoModelForCausalLM

        if name not in self._models:
            path = self.base if name == "base" else self.experts[name]
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            model.eval()
            self._models[name] = model
        return self._models[name]

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.base)
        return self._tokenizer

    # -- scoring ----------------------------------------------------------------------------------------------
    def _score(self, model, rows: list[dict], deadline: float | None = None) -> tuple[float, float]:
        """(geometric mean probability of the completion tokens, exact-match rate) over ``rows``."""
        import torch

        tok = self.tokenizer()
        total_lp, n_tokens, exact = 0.0, 0, 0
        with torch.no_grad():
            for r in rows:
                _check(deadline, "scoring")
                p_ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
                c_ids = tok(r["completion"], add_special_tokens=False)["input_ids"]
                if not c_ids:
                    continue
                bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
                ids = torch.tensor([bos + p_ids + c_ids])
                logits = model(ids).logits[0, :-1].float()
                start = len(bos) + len(p_ids) - 1
                target = ids[0, start + 1:]
                logp = torch.log_softmax(logits[start:], dim=-1)
                total_lp += logp.gather(1, target[:, None]).sum().item()
                n_tokens += len(c_ids)
                exact += int(bool((logits[start:].argmax(-1) == target).all()))
        if not n_tokens:
            return 0.0, 0.0
        return math.exp(total_lp / n_tokens), exact / len(rows)

    def _scores(self, model, deadline: float | None = None) -> dict[str, dict[str, float]]:
        out = {"prob": {}, "em": {}}
        for d, rows in self.tasks.items():
            out["prob"][d], out["em"][d] = self._score(model, rows, deadline)
        out["general"] = self._score(model, self.general, deadline)[0]
        return out

    def _references(self) -> dict:
        if not self._reference:
            self._reference["base"] = self._scores(self._load("base"))
            for d in self.experts:
                self._reference[d] = self._score(self._load(d), self.tasks[d])[0]
        return self._reference

    def _measures(self, scores: dict) -> tuple[float | None, float | None, dict]:
        ref = self._references()
        normalized = {d: 100.0 * scores["prob"][d] / ref[d] for d in self.experts if ref[d] > 0}
        norm = sum(normalized.values()) / len(normalized) if normalized else None
        base_general = ref["base"]["general"]
        forgetting = 100.0 * scores["general"] / base_general if base_general > 0 else None
        return norm, forgetting, normalized

    # -- the interface ----------------------------------------------------------------------------------------
    def describe(self) -> str:
        data = ("task rows per domain (" + ", ".join(f"{d}: {len(r)}" for d, r in self.tasks.items()) + ")"
                if self.with_tasks else "no task files: a fixed English text stands in for every domain")
        return (f"Family `{self.root.name}`: base + {len(self.experts)} experts ({', '.join(self.experts)}); "
                f"{data}; general rows for forgetting: {len(self.general)}. Score = geometric-mean probability "
                "of the reference completion tokens; normalized performance = merge / expert on each expert's "
                "domain; forgetting = merge / base on the general rows (100 % = nothing lost). Relative numbers "
                "on a toy family, not MergeBench's benchmarks.")

    def methods(self) -> dict[str, list[Slider]]:
        return {m: method_sliders(m, len(self.experts)) for m in METHODS}

    def reference_points(self) -> list[dict]:
        with self._lock:
            norm, forgetting, _ = self._measures(self._references()["base"])
        return [{"method": "base", "label": "base", "source": "reference", "norm_perf": norm,
                 "forgetting": forgetting}]

    def merge_and_score(self, method: str, parameters: dict, deadline: float | None = None) -> PlaygroundResult:
        from hfmerge.config import MergeConfig, ModelRef
        from hfmerge.engine import merge_state_dict

        if method not in METHODS:
            raise ValueError(f"method {method!r} is not offered here (choose one of {', '.join(METHODS)})")
        with self._lock:
            _check(deadline, "wait for the previous run")
            self._references()
            config = MergeConfig(method, str(self.base), [ModelRef(str(p)) for p in self.experts.values()],
                                 dict(parameters), dtype="float32")
            t0 = time.perf_counter()
            state = merge_state_dict(config)
            model = self._merged_model(state)
            merge_seconds = time.perf_counter() - t0
            _check(deadline, "merge")
            t1 = time.perf_counter()
            scores = self._scores(model, deadline)
            norm, forgetting, normalized = self._measures(scores)
            self._last = model
            return PlaygroundResult(
                method=method, parameters=dict(parameters), norm_perf=norm, forgetting=forgetting,
                domains={d: 100.0 * v for d, v in scores["prob"].items()}, normalized=normalized,
                exact_match={d: 100.0 * v for d, v in scores["em"].items()},
                merge_seconds=merge_seconds, score_seconds=time.perf_counter() - t1)

    def _merged_model(self, state: dict):
        import copy

        import torch

        model = copy.deepcopy(self._load("base"))
        own = model.state_dict()
        missing = [k for k in own if k not in state and not (k.endswith("lm_head.weight")
                                                               and model.config.tie_word_embeddings)]
        if missing:
            raise ValueError(f"merged tensors miss {missing[0]}")
        model.load_state_dict({k: state[k].to(torch.float32) for k in state if k in own}, strict=False)
        if model.config.tie_word_embeddings:
            model.tie_weights()
        model.eval()
        return model

    def models(self) -> list[str]:
        return ["base", *self.experts, "last merge"]

    def generate(self, model: str, prompt: str, max_new_tokens: int = 24, max_seconds: float | None = None) -> str:
        import torch

        with self._lock:
            if model == "last merge":
                if self._last is None:
                    raise ValueError("no merge yet: press Merge & score first")
                m = self._last
            elif model == "base" or model in self.experts:
                m = self._load(model)
            else:
                raise ValueError(f"unknown model {model!r}")
            tok = self.tokenizer()
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            if tok.bos_token_id is not None:
                ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)
            with torch.no_grad():
                out = m.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, max_time=max_seconds,
                                 pad_token_id=tok.pad_token_id or tok.eos_token_id)
            return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def default_backend() -> tuple[PlaygroundBackend | None, str]:
    """The backend for HFMERGE_PLAYGROUND, or None and why the Playground is unavailable."""
    folder = os.environ.get("HFMERGE_PLAYGROUND") or (str(DEPLOYED_FAMILY) if DEPLOYED_FAMILY.is_dir() else None)
    if not folder:
        return None, ("The Playground needs a small model family: set HFMERGE_PLAYGROUND to a folder with "
                      "base/ and expert folders.")
    try:
        import hfmerge.engine  # noqa: F401
    except ImportError:
        return None, "The Playground needs the hfmerge package: `pip install hfmerge` (the deployed Space has it)."
    try:
        return LocalFamilyBackend(folder), ""
    except (ValueError, OSError) as e:
        return None, f"Playground unavailable: {e}"
