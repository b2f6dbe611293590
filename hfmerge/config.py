"""MergeConfig: the YAML a user writes (native, or mergekit-style translated where the meaning is the same)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from hfmerge.errors import HfMergeError

DEFAULT_SKIP = ["*embed_tokens*", "*lm_head*"]
DTYPE_ALIASES = {
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}
KEYS = ("method", "base_model", "models", "parameters", "dtype", "skip", "seed")


@dataclass
class ModelRef:
    """An expert: its source, weight, and for data-driven methods its data or precomputed statistics."""

    source: str
    weight: float = 1.0
    data: str | None = None  # dataset (local folder/file or Hub id) of the expert's own domain
    stats: str | None = None  # folder made by `hfmerge stats` (skips computing them)


@dataclass
class MergeConfig:
    """What to merge and how. Sources are local folders or Hub ids ``org/name[@revision]``."""

    method: str
    base_model: str
    models: list[ModelRef]
    parameters: dict = field(default_factory=dict)
    dtype: str | None = None  # output dtype; None keeps the base's. Compute is always fp32.
    skip: list[str] = field(default_factory=lambda: list(DEFAULT_SKIP))
    seed: int = 0

    @classmethod
    def from_dict(cls, d: object, origin: str = "config") -> MergeConfig:
        if not isinstance(d, dict):
            raise HfMergeError(f"{origin}: expected a mapping with keys {', '.join(KEYS)}")
        if "merge_method" in d:
            d = from_mergekit(d, origin)
        d = _expand_aliases(d)
        d = _pin_revisions(d)
        unknown = sorted(set(d) - set(KEYS))
        if unknown:
            raise HfMergeError(f"{origin}: unknown key {unknown[0]!r} (valid: {', '.join(KEYS)})")
        for key in ("method", "base_model", "models"):
            if not d.get(key):
                raise HfMergeError(f"{origin}: missing {key!r}")
        if not isinstance(d["models"], list):
            raise HfMergeError(f"{origin}: 'models' must be a list of paths/ids or {{model:, weight:}}")
        models = [_model_ref(m, origin) for m in d["models"]]
        params = d.get("parameters") or {}
        if not isinstance(params, dict):
            raise HfMergeError(f"{origin}: 'parameters' must be a mapping")
        skip = d.get("skip", DEFAULT_SKIP)
        if skip is None or not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise HfMergeError(f"{origin}: 'skip' must be a list of tensor-name patterns (use [] to merge all)")
        seed = d.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise HfMergeError(f"{origin}: 'seed' must be a non-negative integer")
        return cls(str(d["method"]), str(d["base_model"]), models, dict(params), normalize_dtype(d.get("dtype")),
                   list(skip), seed).validate()

    def validate(self) -> MergeConfig:
        """Refuse an unknown method or parameter (naming the nearest valid one) before any source is opened."""
        from hfmerge.methods.registry import get_method

        get_method(self.method).resolve(self.parameters)
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> MergeConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise HfMergeError(f"cannot read config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise HfMergeError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["models"] = [
            {k: v for k, v in asdict(m).items() if v is not None and (k != "weight" or v != 1.0)} for m in self.models
        ]
        d["models"] = [m["source"] if len(m) == 1 else {"model": m.pop("source"), **m} for m in d["models"]]
        return d


def _pin_revisions(d: dict) -> dict:
    """A resolved config (hfmerge.yaml) records ``revisions: {ref: sha}``: re-running it pins every source."""
    revisions = d.get("revisions")
    if not revisions:
        return {k: v for k, v in d.items() if k != "revisions"}
    if not isinstance(revisions, dict):
        raise HfMergeError("'revisions' must map sources to commit shas")

    def pin(ref):
        repo = ref.split("@")[0] if isinstance(ref, str) else None
        return f"{repo}@{revisions[repo]}" if repo in revisions else ref

    d = {k: v for k, v in d.items() if k != "revisions"}
    d["base_model"] = pin(d.get("base_model"))
    d["models"] = [pin(m) if isinstance(m, str) else dict(m, model=pin(m.get("model"))) if isinstance(m, dict)
                   else m for m in d.get("models") or []]
    return d


def _expand_aliases(d: dict) -> dict:
    """``mergebench:<base>`` as base_model gives the base (and its five experts when models is absent);
    as a models entry, the five experts."""
    from hfmerge import catalog

    d = dict(d)
    base = d.get("base_model")
    if isinstance(base, str) and base.startswith(catalog.ALIAS):
        d["base_model"], experts = catalog.resolve_alias(base)
        d.setdefault("models", experts)
    if isinstance(d.get("models"), list):
        models = []
        for m in d["models"]:
            models += catalog.resolve_alias(m)[1] if isinstance(m, str) and m.startswith(catalog.ALIAS) else [m]
        d["models"] = models
    return d


def normalize_dtype(dtype: object) -> str | None:
    if dtype is None:
        return None
    if str(dtype) not in DTYPE_ALIASES:
        raise HfMergeError(f"unsupported dtype {dtype!r} (use bfloat16, float16 or float32)")
    return DTYPE_ALIASES[str(dtype)]


def _model_ref(m: object, origin: str) -> ModelRef:
    if isinstance(m, str):
        return ModelRef(m)
    if isinstance(m, dict) and set(m) <= {"model", "weight", "data", "stats"} and isinstance(m.get("model"), str):
        w = m.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, int | float) or w == 0:
            raise HfMergeError(f"{origin}: weight of {m['model']} must be a non-zero number")
        return ModelRef(m["model"], float(w), m.get("data"), m.get("stats"))
    raise HfMergeError(f"{origin}: model entry {m!r} must be a path/id or {{model:, weight:, data:, stats:}}")


# ---- mergekit-style configs ------------------------------------------------------------------------------

MERGEKIT_METHODS = {"linear": "soup", "task_arithmetic": "task_arithmetic", "ties": "ties", "dare_linear": "dare"}


def from_mergekit(d: dict, origin: str) -> dict:
    """Translate a mergekit YAML where hfmerge computes the same thing; refuse with the reason otherwise."""
    def refuse(why: str) -> HfMergeError:
        return HfMergeError(f"{origin}: mergekit config not translatable: {why}")

    method = d["merge_method"]
    if method not in MERGEKIT_METHODS:
        raise refuse(f"merge_method {method!r} has no hfmerge equivalent "
                     f"(translatable: {', '.join(MERGEKIT_METHODS)})")
    for key in ("slices", "tokenizer", "chat_template"):
        if key in d:
            raise refuse(f"{key!r} is not supported (hfmerge merges whole models and keeps the base tokenizer)")
    if d.get("tokenizer_source", "base") != "base":
        raise refuse("tokenizer_source must be base (hfmerge keeps the base tokenizer and embeddings)")
    base = d.get("base_model")
    if not base:
        raise refuse("base_model is required (hfmerge keeps the base's embeddings, config and tokenizer)")
    glob = dict(d.get("parameters") or {})
    normalize = glob.pop("normalize", method in ("ties", "linear"))
    scaling = glob.pop("lambda", 1.0)
    glob.pop("int8_mask", None)
    rescale = glob.pop("rescale", True)
    models, per_model = [], []
    for m in d.get("models") or []:
        if m.get("model") == base:
            continue
        p = dict(m.get("parameters") or {}, **{k: v for k, v in glob.items() if k not in (m.get("parameters") or {})})
        if any(isinstance(v, list | dict) for v in p.values()):
            raise refuse(f"per-layer parameter gradients (model {m.get('model')}) are not supported")
        per_model.append(p)
        models.append({"model": m.get("model"), "weight": p.pop("weight", 1.0)})
    params: dict = {}
    if method in ("ties", "dare_linear"):
        densities = {p.pop("density", 1.0) for p in per_model}
        if len(densities) > 1:
            raise refuse(f"per-model densities {sorted(densities)} differ; hfmerge uses one density")
        density = densities.pop() if densities else 1.0
        if method == "ties":
            params = {"density": density, "aggregate": "mean" if normalize else "sum", "topk_scope": "tensor"}
        else:
            if not rescale:
                raise refuse("dare_linear with rescale: false is not DARE")
            params = {"drop_rate": 1.0 - density}
        normalize = normalize and method != "ties"
    leftover = sorted({k for p in per_model for k in p})
    if leftover:
        raise refuse(f"parameter {leftover[0]!r} has no hfmerge equivalent for {method}")
    if method != "linear":
        params["scaling"] = scaling
        if normalize:
            total = sum(m["weight"] for m in models)
            for m in models:
                m["weight"] /= total
    out = {"method": MERGEKIT_METHODS[method], "base_model": base, "models": models, "parameters": params}
    if d.get("out_dtype") or d.get("dtype"):
        out["dtype"] = d.get("out_dtype") or d.get("dtype")
    return out
