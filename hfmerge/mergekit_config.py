"""mergekit 0.1.5 YAML, translated to an hfmerge config with the same meaning, or refused naming the feature.

A mergekit config merges every tensor (no default skip). Its parameters may be *settings*, resolved per
tensor as mergekit does (``mergekit.config.evaluate_setting``):

- a number: that value everywhere;
- a list of numbers (a gradient): interpolated linearly at the tensor's depth t = i / (L − 1) for layer i of
  L (t = 1 when L = 1); tensors outside the layers (embeddings, final norm, lm_head) take t = 0;
- a list of ``{filter: <substring of the tensor name> | "*" | absent, value: <setting>}``: the first
  condition that matches gives the value; none matching falls through to the next level.

Levels, highest first: the model's (or slice source's) ``parameters``, the slice's, the config's; then the
method's default. The translation keeps these settings in the hfmerge config under ``per_tensor`` (hfmerge
parameter names), and :class:`TensorParameters` resolves them for every merged tensor before the merge.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import yaml

from hfmerge.errors import HfMergeError

# mergekit method -> hfmerge method, and which mergekit parameters each takes (global / per model)
METHODS = {
    "linear": "soup", "task_arithmetic": "task_arithmetic", "ties": "ties", "dare_linear": "dare_linear",
    "dare_ties": "dare_ties", "breadcrumbs": "breadcrumbs", "breadcrumbs_ties": "breadcrumbs_ties",
    "della": "della", "della_linear": "della_linear", "slerp": "slerp", "model_stock": "model_stock",
    "nuslerp": "nuslerp",
}
GTA = {  # generalized task arithmetic: (default normalize, default rescale, per-model parameters)
    "task_arithmetic": (False, False, ("weight", "density")),
    "ties": (True, False, ("weight", "density")),
    "dare_linear": (False, True, ("weight", "density")),
    "dare_ties": (False, True, ("weight", "density")),
    "breadcrumbs": (False, False, ("weight", "density", "gamma")),
    "breadcrumbs_ties": (False, False, ("weight", "density", "gamma")),
    "della": (True, True, ("weight", "density", "epsilon")),
    "della_linear": (False, True, ("weight", "density", "epsilon")),
}
GLOBAL = {"linear": ("normalize",), "slerp": ("t",), "model_stock": ("filter_wise",),
          "nuslerp": ("nuslerp_flatten", "nuslerp_row_wise")}
PER_MODEL = {"linear": ("weight",), "slerp": (), "model_stock": (), "nuslerp": ("weight",)}
PER_EXPERT = ("density", "gamma", "epsilon")  # hfmerge parameters that take one value per expert
KEYS = {"models", "slices", "merge_method", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source",
        "tokenizer", "chat_template", "modules", "name"}
LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def evaluate(setting: object, name: str, t: float) -> object:
    """A mergekit parameter setting at one tensor (None: no condition matched)."""
    if isinstance(setting, dict) and "value" in setting:
        setting = [setting]
    if isinstance(setting, bool | int | float | str) or setting is None:
        return setting
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, int | float) and not isinstance(e, bool) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        if all(isinstance(e, bool | int | float | str) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        for cond in setting:
            f = cond.get("filter")
            if f is None or f == "*" or f in name:
                return evaluate(cond.get("value"), name, t)
        return None
    raise HfMergeError(f"unexpected mergekit parameter setting {setting!r}")


def depth(name: str, num_layers: int) -> float:
    """mergekit's t of a tensor: i / (L − 1) for layer i (1 when L = 1), 0 outside the layers."""
    m = LAYER.search(name)
    if not m:
        return 0.0
    return int(m.group(1)) / (num_layers - 1) if num_layers > 1 else 1.0


def _check_setting(setting: object, where: str) -> None:
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list) and any(isinstance(e, dict) for e in setting):
        for cond in setting:
            if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
                raise HfMergeError(f"{where}: filter entries must be {{filter: <name part>, value: <setting>}}")
            _check_setting(cond["value"], where)
    elif isinstance(setting, list):
        if not all(isinstance(e, bool | int | float | str) for e in setting):
            raise HfMergeError(f"{where}: a gradient is a list of numbers")


def translate(d: dict, origin: str, text: str | None = None) -> dict:
    """The hfmerge config (a dict for MergeConfig.from_dict) meaning what the mergekit config ``d`` means."""
    def refuse(why: str) -> HfMergeError:
        return HfMergeError(f"{origin}: mergekit config not supported: {why}")

    method = d.get("merge_method")
    if method == "passthrough":
        raise refuse("merge_method passthrough (frankenmerges: layers stacked from different models) is not "
                     "supported; hfmerge merges models of one architecture tensor by tensor")
    if method not in METHODS:
        raise refuse(f"merge_method {method!r} has no hfmerge equivalent (supported: {', '.join(METHODS)})")
    unknown = sorted(set(d) - KEYS)
    if unknown:
        raise refuse(f"unknown key {unknown[0]!r}")
    if "modules" in d:
        raise refuse("'modules' (per-module configs of multimodal models) is not supported")
    tok = d.get("tokenizer_source")
    if isinstance(d.get("tokenizer"), dict):
        extra = sorted(set(d["tokenizer"]) - {"source"})
        if extra:
            raise refuse(f"tokenizer.{extra[0]} (vocabulary surgery) is not supported")
        tok = d["tokenizer"].get("source")
    if tok not in (None, "base"):
        raise refuse(f"tokenizer source {tok!r} is not supported: hfmerge keeps the base model's tokenizer "
                     "(tokenizer_source: base)")
    if d.get("chat_template") not in (None, "auto"):
        raise refuse(f"chat_template {d['chat_template']!r} is not supported: hfmerge keeps the base model's "
                     "chat template (chat_template: auto, when the experts share it)")

    base = d.get("base_model")
    slice_params: dict = {}
    layers = None
    if "slices" in d:
        if "models" in d:
            raise refuse("give either 'models' or 'slices', not both")
        slices = d["slices"]
        if not isinstance(slices, list) or len(slices) != 1:
            raise refuse(f"{len(slices) if isinstance(slices, list) else 'no'} output slices: stacking layer "
                         "ranges (a frankenmerge) is not supported; one slice over the full layer range is")
        sl = slices[0]
        sources = sl.get("sources") or []
        ranges = {tuple(s.get("layer_range") or ()) for s in sources}
        if len(ranges) != 1 or len(next(iter(ranges))) != 2 or next(iter(ranges))[0] != 0:
            raise refuse(f"slice layer ranges {sorted(ranges)} differ or do not start at 0: only slices whose "
                         "sources all cover the same full layer range are supported")
        layers = int(next(iter(ranges))[1])
        base = sl.get("base_model") or base
        slice_params = sl.get("parameters") or {}
        entries = [{"model": s.get("model"), "parameters": s.get("parameters") or {}} for s in sources]
    else:
        entries = [m if isinstance(m, dict) else {"model": m} for m in d.get("models") or []]
    if not entries or not all(isinstance(e.get("model"), str) for e in entries):
        raise refuse("'models' must list {model: <path or Hub id>, parameters: {...}}")
    glob = dict(d.get("parameters") or {})
    for where, params in [("parameters", glob), ("slice parameters", slice_params)] + [
            (f"parameters of {e['model']}", e.get("parameters") or {}) for e in entries]:
        if not isinstance(params, dict):
            raise refuse(f"{where} must be a mapping")
        for k, v in params.items():
            _check_setting(v, f"{origin}: {where}.{k}")

    if method == "linear":
        template = base or entries[0]["model"]
        if base and base not in [e["model"] for e in entries]:
            raise refuse("linear with a base_model that is not among the models (mergekit would add it)")
        experts = entries
    elif method == "nuslerp" and not base:  # slerp of the two models themselves, the first as template
        template, experts = entries[0]["model"], entries
    else:
        if not base:
            raise refuse(f"{method} needs a base_model")
        template = base
        experts = [e for e in entries if e["model"] != base]
    if method == "slerp" and len(experts) != 1:
        raise refuse(f"slerp merges exactly two models (the base and one other), got {len(experts) + 1}")
    if method == "nuslerp" and len(experts) != 2:
        raise refuse(f"nuslerp merges exactly two models (plus an optional base), got {len(experts)}")
    if method == "model_stock" and len(experts) < 2:
        raise refuse("model_stock needs at least two models besides the base")
    if not experts:
        raise refuse("no models to merge besides the base")

    if method in GTA:
        normalize_default, rescale_default, per_model = GTA[method]
        shared = ("normalize", "rescale", "lambda", "int8_mask")
    else:
        per_model, shared = PER_MODEL[method], GLOBAL[method]
    known = set(per_model) | set(shared)
    for where, params in [("parameters", glob), ("slice parameters", slice_params)] + [
            (f"parameters of {e['model']}", e.get("parameters") or {}) for e in entries]:
        bad = sorted(set(params) - known)
        if bad:
            raise refuse(f"{where}: {method} has no parameter {bad[0]!r} (mergekit's: {', '.join(sorted(known))})")

    def fixed(name: str, default: object) -> object:
        """A shared parameter that hfmerge needs as one value for the whole model (no gradient or filter)."""
        value = slice_params.get(name, glob.get(name, default))
        if isinstance(value, list | dict):
            raise refuse(f"a per-tensor {name!r} is not supported (give one value)")
        return value

    def chain(*settings: object) -> object:
        """One setting that falls back level by level (mergekit's precedence), as a filter list."""
        present = [s for s in settings if s is not None]
        if not present:
            return None
        out: list = []
        for s in present:
            s = [s] if isinstance(s, dict) else s
            if isinstance(s, list) and s and all(isinstance(c, dict) for c in s):
                out += s
            else:
                out.append({"value": s})
                break
        return out[0]["value"] if len(out) == 1 and "filter" not in out[0] else out

    fixed("int8_mask", False)  # a memory hint for mergekit's masks: accepted and ignored
    hf_method = METHODS[method]
    params: dict = {}
    per_tensor: dict = {"layers": layers, "parameters": {}, "models": [], "normalize_weights": False}
    names = {"lambda": "scaling"}
    if method in GTA:
        normalize = fixed("normalize", normalize_default)
        rescale = fixed("rescale", rescale_default)
        scaling = chain(slice_params.get("lambda"), glob.get("lambda"))
        if scaling is not None:
            per_tensor["parameters"]["scaling"] = scaling
        if method == "ties":
            if rescale:
                raise refuse("ties with rescale: true (L1 rescaling of the trimmed task vectors) is not supported")
            params.update(density=1.0, topk_scope="tensor", aggregate="weighted" if normalize else "sum")
        elif method == "task_arithmetic":
            per_tensor["normalize_weights"] = bool(normalize)
        else:
            params.update(density=1.0, normalize=bool(normalize), rescale=bool(rescale))
        if method == "task_arithmetic":
            per_model = ("weight",)
            if any(evaluate(s, "", 0) not in (None, 1, 1.0) for s in
                   [glob.get("density"), slice_params.get("density")]
                   + [(e.get("parameters") or {}).get("density") for e in experts]):
                raise refuse("task_arithmetic with density < 1 is not supported (use ties, dare or breadcrumbs)")
    elif method == "linear":
        if not fixed("normalize", True):
            raise refuse("linear with normalize: false (an unnormalised sum of models) is not supported")
    elif method == "slerp":
        t = chain(slice_params.get("t"), glob.get("t"))
        if t is None:
            raise refuse("slerp needs the parameter t")
        per_tensor["parameters"]["t"] = t
    elif method == "nuslerp":
        params.update(flatten=bool(fixed("nuslerp_flatten", True)), row_wise=bool(fixed("nuslerp_row_wise", False)),
                      task_vectors=bool(base))
    elif method == "model_stock":
        if fixed("filter_wise", False):
            raise refuse("model_stock with filter_wise: true (one t per row) is not supported")
    for e in experts:
        own = e.get("parameters") or {}
        entry = {}
        for p in per_model:
            s = chain(own.get(p), slice_params.get(p), glob.get(p))
            if p == "weight" and s is None:
                raise refuse(f"model {e['model']} has no weight (mergekit requires one for {method})")
            if s is not None:
                entry[names.get(p, p)] = s
        per_tensor["models"].append(entry)

    out = {"method": hf_method, "base_model": template, "skip": [],
           "models": [e["model"] for e in experts], "parameters": params, "per_tensor": per_tensor,
           "mergekit_config": text if text is not None else yaml.safe_dump(d, sort_keys=False)}
    if d.get("out_dtype") or d.get("dtype"):
        out["dtype"] = d.get("out_dtype") or d.get("dtype")
    return out


@dataclass
class Resolved:
    params: dict  # the method's parameters for this tensor (per-expert ones as tuples when they differ)
    weights: list[float]


class TensorParameters:
    """Per-tensor parameters and weights from a config's ``per_tensor`` settings, for every merged tensor.

    Resolved (and checked against the method's parameter ranges) up front, so a bad value fails before
    anything is written."""

    def __init__(self, per_tensor: dict, method, params: dict, weights: list[float], names: list[str],
                 num_layers: int | None):
        layers = per_tensor.get("layers")
        if layers is not None and num_layers is not None and layers != num_layers:
            raise HfMergeError(f"the config's layer range [0, {layers}] does not cover the base's {num_layers} "
                               "layers: only slices over the full layer range are supported")
        n_layers = num_layers or layers or 1
        shared = per_tensor.get("parameters") or {}
        models = per_tensor.get("models") or [{} for _ in weights]
        if len(models) != len(weights):
            raise HfMergeError(f"per_tensor.models has {len(models)} entries for {len(weights)} models")
        self.table: dict[str, Resolved] = {}
        for name in names:
            t = depth(name, n_layers)
            p = dict(params)
            for k, s in shared.items():
                v = evaluate(s, name, t)
                if v is not None:
                    p[k] = self._check(method, k, v, name)
            w = list(weights)
            per_expert: dict[str, list] = {}
            for i, m in enumerate(models):
                for k, s in m.items():
                    v = evaluate(s, name, t)
                    if k == "weight":
                        if v is None:
                            raise HfMergeError(f"no weight for model {i + 1} on tensor {name}")
                        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                            raise HfMergeError(f"weight {v!r} of model {i + 1} on tensor {name} is not a number")
                        w[i] = float(v)
                    elif v is not None:
                        per_expert.setdefault(k, [p.get(k)] * len(models))[i] = self._check(method, k, v, name)
            for k, vals in per_expert.items():
                if any(v is None for v in vals):
                    raise HfMergeError(f"{method.name} parameter {k} is missing for some models on tensor {name}")
                if k not in PER_EXPERT and len(set(vals)) > 1:
                    raise HfMergeError(f"{method.name} parameter {k} must be the same for every model "
                                       f"(tensor {name}: {vals})")
                p[k] = vals[0] if len(set(vals)) == 1 else tuple(vals)
            if per_tensor.get("normalize_weights"):
                total = sum(w)
                if abs(total) >= 1e-8:
                    w = [x / total for x in w]
            if method.name == "soup" and abs(sum(w)) < 1e-12:
                raise HfMergeError(f"the weights of tensor {name} sum to 0: linear cannot normalise them")
            self.table[name] = Resolved(p, w)

    @staticmethod
    def _check(method, key: str, value: object, name: str) -> object:
        if key not in method.params:
            raise HfMergeError(f"method {method.name} has no parameter {key!r}")
        try:
            return method.params[key].check(method.name, key, value)
        except HfMergeError as e:
            raise HfMergeError(f"{e} (tensor {name})") from None
