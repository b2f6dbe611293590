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
KEYS = ("method", "base_model", "models", "parameters", "dtype", "skip", "seed", "per_tensor", "mergekit_config")


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
    per_tensor: dict | None = None  # per-tensor settings (gradients, filters) of a mergekit config
    mergekit_config: str | None = None  # the mergekit YAML this config was translated from, verbatim

    @classmethod
    def from_dict(cls, d: object, origin: str = "config", text: str | None = None) -> MergeConfig:
        if not isinstance(d, dict):
            raise HfMergeError(f"{origin}: expected a mapping with keys {', '.join(KEYS)}")
        if "merge_method" in d:
            d = from_mergekit(d, origin, text)
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
        per_tensor = d.get("per_tensor")
        if per_tensor is not None and not isinstance(per_tensor, dict):
            raise HfMergeError(f"{origin}: 'per_tensor' must be a mapping (layers, parameters, models)")
        return cls(str(d["method"]), str(d["base_model"]), models, dict(params), normalize_dtype(d.get("dtype")),
                   list(skip), seed, per_tensor, d.get("mergekit_config")).validate()

    def validate(self) -> MergeConfig:
        """Refuse an unknown method or parameter (naming the nearest valid one) before any source is opened."""
        from hfmerge.methods.registry import get_method

        method = get_method(self.method)
        method.resolve(self.parameters)
        n = len(self.models)
        if n and n < method.min_experts:
            raise HfMergeError(f"method {method.name} needs at least {method.min_experts} experts, got {n}")
        if method.max_experts is not None and n > method.max_experts:
            raise HfMergeError(f"method {method.name} merges the base with at most {method.max_experts} other "
                               f"model(s), got {n}")
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
        return cls.from_dict(data, str(path), path.read_text())

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None or k not in ("per_tensor", "mergekit_config")}
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


def from_mergekit(d: dict, origin: str, text: str | None = None) -> dict:
    """Translate a mergekit YAML to the hfmerge config meaning the same (hfmerge.mergekit_config)."""
    from hfmerge.mergekit_config import translate

    return translate(d, origin, text)
