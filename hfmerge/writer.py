"""Streaming sharded safetensors output.

The full list of output tensors (names, shapes, dtypes) is known before any data is merged, so every
shard's header is written first and tensor bytes are then appended in order as they are produced, chunk
by chunk: no shard is ever held in memory. Files are named like transformers' own
(``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``).
"""

from __future__ import annotations

import json
import re
import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from hfmerge.errors import HfMergeError
from hfmerge.sources import DTYPE_NAMES, DTYPES

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
         "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int) -> int:
    """'5GB' -> 5e9 bytes, '500MiB' -> 500·2^20; a bare number is bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS or float(m.group(1)) <= 0:
        raise HfMergeError(f"invalid size {text!r}: use e.g. 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


class ShardWriter:
    """Writes the planned tensors, in plan order, into shards of at most ``shard_size`` bytes."""

    def __init__(self, folder: Path, tensors: list[OutTensor], shard_size: int, name: str = "model"):
        self.folder = folder
        self.index_file = f"{name}.safetensors.index.json"
        self.shards: list[list[OutTensor]] = [[]]
        size = 0
        for t in tensors:
            if self.shards[-1] and size + t.nbytes > shard_size:
                self.shards.append([])
                size = 0
            self.shards[-1].append(t)
            size += t.nbytes
        n = len(self.shards)
        self.names = (
            [f"{name}.safetensors"] if n == 1 else [f"{name}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.order = [(i, t) for i, shard in enumerate(self.shards) for t in shard]
        self.bytes_written = 0
        self._pos = -1  # index into self.order of the tensor being written
        self._left = 0  # bytes still owed for it
        self._file: BinaryIO | None = None
        self._shard = -1
        self._io = ThreadPoolExecutor(1, thread_name_prefix="hfmerge-writer")  # writes overlap compute
        self._pending: deque[Future] = deque()

    def _submit(self, fn, *args) -> None:
        """Queue file work on the writer thread, in order; at most two chunks in flight."""
        self._pending.append(self._io.submit(fn, *args))
        while len(self._pending) > 2:
            self._wait()

    def _drain(self) -> None:
        while self._pending:
            self._wait()

    def _wait(self) -> None:
        try:
            self._pending.popleft().result()
        except OSError as e:
            raise HfMergeError(f"cannot write the output in {self.folder.parent}: {e.strerror or e}") from None

    def _open_file(self, i: int, head: bytes) -> None:
        if self._file:
            self._file.close()
        self._file = open(self.folder / self.names[i], "wb")  # noqa: SIM115 - closed by the next shard or finish()
        self._file.write(head)

    def _open_shard(self, i: int) -> None:
        header, offset = {}, 0
        for t in self.shards[i]:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._submit(self._open_file, i, struct.pack("<Q", len(raw)) + raw)
        self._shard = i

    def begin(self, name: str) -> OutTensor:
        """Start the next tensor of the plan; its bytes follow through :meth:`write`."""
        if self._left:
            raise RuntimeError(f"{self.order[self._pos][1].name} is missing {self._left} bytes")
        self._pos += 1
        shard, t = self.order[self._pos]
        if t.name != name:
            raise RuntimeError(f"writer expected {t.name}, got {name}")
        if shard != self._shard:
            self._open_shard(shard)
        self._left = t.nbytes
        return t

    def write(self, data: torch.Tensor | bytes | bytearray) -> None:
        """Append bytes (or a tensor chunk, already in the output dtype) to the current tensor."""
        if isinstance(data, torch.Tensor):
            if DTYPE_NAMES[data.dtype] != self.order[self._pos][1].dtype:
                raise RuntimeError(f"dtype {data.dtype} for {self.order[self._pos][1].name}")
            data = data.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if n > self._left:
            raise RuntimeError(f"too many bytes for {self.order[self._pos][1].name}")
        self._submit(lambda d: self._file.write(d), data)
        self._left -= n
        self.bytes_written += n

    def finish(self) -> list[str]:
        """Close the last shard and write the index when sharded; returns the file names written."""
        if self._left or self._pos != len(self.order) - 1:
            raise RuntimeError("merge ended before every tensor was written")
        self._drain()
        self._io.shutdown()
        if self._file:
            self._file.close()
        elif not self.order:
            raise HfMergeError("nothing to write: the checkpoint has no tensors")
        if len(self.names) > 1:
            index = {
                "metadata": {"total_size": sum(t.nbytes for _, t in self.order)},
                "weight_map": {t.name: self.names[i] for i, t in self.order},
            }
            (self.folder / self.index_file).write_text(json.dumps(index, indent=2) + "\n")
            return [*self.names, self.index_file]
        return list(self.names)

    def abort(self) -> None:
        """Stop writing (after an error, or as a no-op after finish)."""
        for f in self._pending:
            f.cancel()
        self._io.shutdown(wait=True)
        self._pending.clear()
        if self._file:
            self._file.close()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """One safetensors file written tensor by tensor (safetensors' save_file builds a full copy in memory)."""
    specs = [OutTensor(n, DTYPE_NAMES[t.dtype], tuple(t.shape)) for n, t in tensors.items()]
    writer = ShardWriter(path.parent, specs, shard_size=1 << 62, name=path.name.removesuffix(".safetensors"))
    try:
        for n, t in tensors.items():
            writer.begin(n)
            writer.write(t)
        writer.finish()
    finally:
        writer.abort()


class MemoryWriter:
    """The ShardWriter protocol, collecting the tensors in memory instead (tuning, in-memory evaluation)."""

    def __init__(self, tensors: list[OutTensor]):
        self.specs = {t.name: t for t in tensors}
        self.tensors: dict[str, torch.Tensor] = {}
        self.bytes_written = 0
        self._name: str | None = None
        self._parts: list[torch.Tensor] = []

    def _close_tensor(self) -> None:
        if self._name is not None:
            spec = self.specs[self._name]
            self.tensors[self._name] = torch.cat([p.reshape(-1) for p in self._parts]).reshape(spec.shape)
            self._name, self._parts = None, []

    def begin(self, name: str) -> OutTensor:
        self._close_tensor()
        self._name = name
        return self.specs[name]

    def write(self, data: torch.Tensor | bytes | bytearray) -> None:
        if not isinstance(data, torch.Tensor):
            data = torch.frombuffer(bytearray(data), dtype=DTYPES[self.specs[self._name].dtype])
        self._parts.append(data)
        self.bytes_written += data.numel() * data.element_size()

    def finish(self) -> list[str]:
        self._close_tensor()
        return []

    def abort(self) -> None:
        self._parts = []
