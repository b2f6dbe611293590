"""LoRA experts: a peft adapter read as the full expert θ = θ₀ + (α/r)·B·A, tensor by tensor.

Only the adapter's A/B matrices are read from the adapter; rows of the expert weight are materialised on
demand as base rows + (α/r)·B[rows]·A (α/√r with rsLoRA), so a LoRA expert costs what its base costs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from hfmerge.errors import HfMergeError
from hfmerge.sources import DTYPES, FLOAT_DTYPES, HUB_ID, Checkpoint, Reader, TensorInfo, parse_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")


def is_adapter(reader: Reader) -> bool:
    files = reader.list_files()
    return ADAPTER_CONFIG in files and not any(f.startswith("model") and f.endswith(".safetensors") for f in files)


def _other_model(declared: str, base: Checkpoint) -> bool:
    """True when the adapter's declared base is recognisably not ``base`` (by local config or Hub id)."""
    path = Path(declared).expanduser()
    if (path / "config.json").is_file():
        other = json.loads((path / "config.json").read_text())
        return any(other.get(k) != base.config.get(k) for k in ("model_type", "architectures", "hidden_size",
                                                                 "num_hidden_layers", "vocab_size"))
    return bool(HUB_ID.match(declared) and HUB_ID.match(base.ref) and not Path(base.ref).exists()
                and declared.split("@")[0] != base.ref.split("@")[0])


class LoraCheckpoint:
    """A LoRA adapter over its base, with the Checkpoint interface the engine reads."""

    def __init__(self, ref: str, reader: Reader, base: Checkpoint):
        self.ref, self.reader, self.base = ref, reader, base
        cfg = json.loads(reader.read_file(ADAPTER_CONFIG))
        if cfg.get("peft_type", "LORA") != "LORA":
            raise HfMergeError(f"{ref} is a {cfg.get('peft_type')} adapter; only LoRA adapters are supported")
        declared = cfg.get("base_model_name_or_path")
        if declared and _other_model(declared, base):
            raise HfMergeError(f"{ref} is a LoRA adapter of {declared}, not of the base {base.ref} "
                               "(an adapter of another model?)")
        r = cfg["r"]
        self.scale = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
        if cfg.get("fan_in_fan_out"):
            raise HfMergeError(f"{ref}: fan_in_fan_out adapters (Conv1D models) are not supported")
        if ADAPTER_WEIGHTS not in reader.list_files():
            raise HfMergeError(f"{ref} has no {ADAPTER_WEIGHTS} (pickle adapters are not read)")
        self._ab: dict[str, dict[str, TensorInfo]] = {}
        for key, info in parse_header(reader, ADAPTER_WEIGHTS).items():
            m = _KEY.match(key)
            if not m:
                raise HfMergeError(f"{ref}: adapter tensor {key} is not a LoRA A/B matrix (modules_to_save is "
                                   "not supported)")
            self._ab.setdefault(f"{m.group(1)}.weight", {})[m.group(2)] = info
        for name, ab in self._ab.items():
            target = base.tensors.get(name)
            if target is None or set(ab) != {"A", "B"}:
                raise HfMergeError(f"{ref}: LoRA target {name} does not exist in the base {base.ref} "
                                   "(an adapter of another model?)")
            for k, info in ab.items():
                if info.dtype not in FLOAT_DTYPES or len(info.shape) != 2:
                    raise HfMergeError(f"{ref}: LoRA {k} of {name} is a {info.dtype} tensor of shape "
                                       f"{list(info.shape)}, not a float matrix (quantized adapters are not "
                                       "supported: save the adapter in bf16 or fp32)")
            out_dim, in_dim = target.shape
            if ab["B"].shape[0] != out_dim or ab["A"].shape[1] != in_dim or ab["A"].shape[0] != ab["B"].shape[1]:
                raise HfMergeError(f"{ref}: LoRA matrices for {name} do not fit the base's {list(target.shape)} "
                                   "(an adapter of another model?)")
        self.tensors = base.tensors
        self.config = base.config
        self.files = base.files
        self.weight_bytes = sum(i.nbytes for ab in self._ab.values() for i in ab.values())
        self.bytes_read = 0
        self._cache: tuple[str, torch.Tensor, torch.Tensor] | None = None

    @property
    def revision(self) -> str | None:
        return self.reader.revision

    def _matrices(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cache is None or self._cache[0] != name:
            ab = {}
            for k, info in self._ab[name].items():
                data = self.reader.read_range(info.file, info.start, info.nbytes)
                self.bytes_read += len(data)
                ab[k] = torch.frombuffer(data, dtype=DTYPES[info.dtype]).reshape(info.shape).float()
            self._cache = (name, ab["A"], ab["B"])
        return self._cache[1], self._cache[2]

    def read(self, name: str, first: int = 0, rows: int | None = None) -> torch.Tensor:
        """Rows of the expert's tensor: the base's rows, plus (α/r)·B[rows]·A for LoRA targets (fp32)."""
        base_rows = self.base.read(name, first, rows)
        if name not in self._ab:
            return base_rows
        a, b = self._matrices(name)
        rows = base_rows.shape[0]
        delta = b[first:first + rows] @ a
        return delta.mul_(self.scale).add_(base_rows.float())

    def close(self) -> None:
        self.reader.close()
