"""Lazy access to the tensors of a checkpoint, wherever its bytes live.

A :class:`Checkpoint` parses only the safetensors headers; tensor data (or a row range of a tensor) is
read on demand by byte range through a :class:`Reader`: :class:`LocalReader` for folders (positional reads
into fresh buffers, so nothing stays mapped or resident after a tensor is consumed), or
:class:`hfmerge.remote.RemoteReader` for Hub repos (planned large ranges, bounded read-ahead). Pickle
checkpoints are refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Protocol

import torch

from hfmerge import safetensors_header
from hfmerge.errors import HfMergeError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
INDEX_FILE = "model.safetensors.index.json"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, dtype and shape."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_numel(self) -> int:
        return prod(self.shape[1:]) if self.shape else 1


class Reader(Protocol):
    """Byte access to the files of one checkpoint (a local folder, a Hub repo, ...)."""

    label: str
    revision: str | None

    def list_files(self) -> list[str]: ...

    def read_range(self, file: str, offset: int, length: int) -> bytes | bytearray: ...

    def read_file(self, file: str) -> bytes | None:
        """The whole (small) file, or None when it does not exist."""
        ...

    def copy_to(self, file: str, dest: Path) -> None: ...

    def close(self) -> None: ...

    # optional: ``plan(spans)`` announces the ranges about to be read, in order (see RemoteReader.plan)


class LocalReader:
    """Reads a local folder with positional reads (thread-safe, no resident mappings): ``os.preadv`` where the
    platform has it, else a seek + readinto under a per-file lock (Windows)."""

    def __init__(self, folder: Path, label: str | None = None, revision: str | None = None):
        self.folder = folder
        self.label = label or str(folder)
        self.revision = revision
        self._file_locks: dict[str, threading.Lock] = {}
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def list_files(self) -> list[str]:
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if p.is_file())

    def _fd(self, file: str) -> int:
        with self._lock:
            fd = self._fds.get(file)
            if fd is None:
                try:
                    fd = os.open(self.folder / file, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                except OSError as e:
                    raise HfMergeError(f"cannot read {self.folder / file}: {e.strerror}") from None
                self._fds[file] = fd
            return fd

    def _pread(self, file: str, fd: int, view: memoryview, offset: int) -> int:
        if HAVE_PREADV:
            return os.preadv(fd, [view], offset)
        with self._lock:
            lock = self._file_locks.setdefault(file, threading.Lock())
        with lock:  # the file position is shared: one seek + read at a time per file
            os.lseek(fd, offset, os.SEEK_SET)
            return os.readv(fd, [view]) if hasattr(os, "readv") else _read_into(fd, view)

    def read_range(self, file: str, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        view, fd, done = memoryview(buf), self._fd(file), 0
        while done < length:
            n = self._pread(file, fd, view[done:], offset + done)
            if n <= 0:
                raise HfMergeError(f"{self.folder / file} is truncated (wanted {length} bytes at {offset})")
            done += n
        return buf

    def read_file(self, file: str) -> bytes | None:
        path = self.folder / file
        return path.read_bytes() if path.is_file() else None

    def copy_to(self, file: str, dest: Path) -> None:
        shutil.copyfile(self.folder / file, dest)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


HAVE_PREADV = hasattr(os, "preadv")


def _read_into(fd: int, view: memoryview) -> int:
    data = os.read(fd, len(view))
    view[:len(data)] = data
    return len(data)


def parse_header(reader: Reader, file: str) -> dict[str, TensorInfo]:
    """Tensor locations from one safetensors file's header, validated by every rule of the format
    (:mod:`hfmerge.safetensors_header`) against the file's size; a local file is also opened by the
    safetensors library itself, which must agree. Dtypes hfmerge cannot read are refused here."""
    where = f"{reader.label}/{file}"
    size = _file_size(reader, file)
    data_start, entries = safetensors_header.parse(lambda off, n: bytes(reader.read_range(file, off, n)), size, where)
    folder = getattr(reader, "folder", None)
    if folder is not None:
        _library_check(Path(folder) / file, entries, where)
    out = {}
    for name, e in entries.items():
        if e.dtype not in DTYPES:
            raise HfMergeError(f"{where}: tensor {name!r} has dtype {e.dtype}, which hfmerge does not read: merging "
                               "quantized or non-float weights is not supported (dequantize the checkpoint to bf16 "
                               "first)")
        out[name] = TensorInfo(name, file, e.dtype, e.shape, data_start + e.begin, e.end - e.begin)
    return out


def _file_size(reader: Reader, file: str) -> int:
    """The size of ``file`` from the reader (``file_size(file)``, a ``sizes`` map, or a local ``folder``)."""
    if callable(size_of := getattr(reader, "file_size", None)):
        return size_of(file)
    sizes = getattr(reader, "sizes", None)
    if isinstance(sizes, dict) and file in sizes:
        return sizes[file]
    folder = getattr(reader, "folder", None)
    if folder is not None:
        try:
            return os.stat(Path(folder) / file).st_size
        except OSError as e:
            raise HfMergeError(f"cannot read {Path(folder) / file}: {e.strerror}") from None
    raise HfMergeError(f"{reader.label}/{file}: the size of the file is unknown, so its header cannot be checked")


def _library_check(path: Path, entries: dict[str, safetensors_header.HeaderEntry], where: str) -> None:
    """The safetensors library's own validation of a local file (it maps the file and parses the header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise HfMergeError(f"{where}: the safetensors library refuses the file ({' '.join(str(e).split())})") from None
    if names != set(entries):
        raise HfMergeError(f"{where}: the safetensors library reads other tensors than the header lists "
                           "(corrupt file: download or save it again)")


class Checkpoint:
    """A model checkpoint opened lazily: config, tokenizer files and tensor index, no tensor data."""

    def __init__(self, ref: str, reader: Reader, require_config: bool = True):
        self.ref = ref
        self.reader = reader
        self.bytes_read = 0
        self._count_lock = threading.Lock()
        files = reader.list_files()
        weight_files = self._weight_files(files)
        self.tensors: dict[str, TensorInfo] = {}
        for f in weight_files:
            self.tensors.update(parse_header(reader, f))
        raw = reader.read_file("config.json") if require_config else b"{}"
        if raw is None:
            raise HfMergeError(f"{ref} has no config.json: hfmerge merges transformers checkpoints")
        self.config: dict = json.loads(raw)
        self.files = files
        self.weight_bytes = sum(t.nbytes for t in self.tensors.values())

    def _weight_files(self, files: list[str]) -> list[str]:
        if INDEX_FILE in files:
            index = json.loads(self.reader.read_file(INDEX_FILE))
            return sorted(set(index["weight_map"].values()))
        found = [f for f in files if f.endswith(".safetensors") and "/" not in f and not f.startswith("adapter_")]
        if "adapter_config.json" in files and not found:
            raise HfMergeError(f"{self.ref} is a LoRA adapter, not a full checkpoint (adapters can be experts only)")
        if not found:
            pickles = [f for f in files if any(Path(f).match(p) for p in PICKLE_PATTERNS)]
            if pickles:
                raise HfMergeError(
                    f"{self.ref} holds only pickle weights ({pickles[0]}); hfmerge does not unpickle untrusted "
                    "files: convert it to safetensors first (model.save_pretrained(dir, safe_serialization=True))"
                )
            raise HfMergeError(f"{self.ref} has no *.safetensors weights")
        return sorted(found)

    @property
    def revision(self) -> str | None:
        return self.reader.revision

    def plan(self, items: list[tuple[int, str, bool]]) -> None:
        """Announce the tensors about to be read, in order, to a reader that reads ahead (a Hub repo):
        ``(rank, tensor name, spill)``; ``rank`` orders the reads of all sources together, ``spill`` marks
        tensors that will be read more than once (kept in a local spill instead of fetched again)."""
        plan = getattr(self.reader, "plan", None)
        if plan is not None:
            plan([(rank, t.file, t.start, t.nbytes, spill) for rank, name, spill in items
                  if (t := self.tensors.get(name)) is not None])

    def read_bytes(self, info: TensorInfo, first_row: int = 0, rows: int | None = None) -> bytearray:
        rows = info.rows - first_row if rows is None else rows
        row_bytes = info.row_numel * info.itemsize
        data = self.reader.read_range(info.file, info.start + first_row * row_bytes, rows * row_bytes)
        with self._count_lock:
            self.bytes_read += len(data)
        return data

    def read(self, name: str, first_row: int = 0, rows: int | None = None) -> torch.Tensor:
        """Rows ``[first_row, first_row + rows)`` of a tensor, in its stored dtype."""
        info = self.tensors[name]
        rows = info.rows - first_row if rows is None else rows
        data = self.read_bytes(info, first_row, rows)
        shape = (rows, *info.shape[1:]) if info.shape else ()
        if not data:
            return torch.empty(shape, dtype=DTYPES[info.dtype])
        return torch.frombuffer(data, dtype=DTYPES[info.dtype]).reshape(shape)

    def close(self) -> None:
        self.reader.close()


HUB_ID = re.compile(r"^[\w.\-]+/[\w.\-]+(@[\w.\-/]+)?$")


def open_reader(ref: str, download: bool = False) -> Reader:
    """Byte access to a checkpoint: a local folder, else a Hub repo ``org/name[@revision]`` read lazily by
    byte ranges (or, with ``download``, from a snapshot in the HF cache)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return LocalReader(path.resolve())
    if path.exists():
        raise HfMergeError(f"{ref} is a file; give the checkpoint folder that holds config.json and weights")
    if HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        from hfmerge import remote  # the Hub readers (imports huggingface_hub only when a Hub source is used)

        repo, revision = remote.split_ref(ref)
        if not download:
            return remote.RemoteReader(repo, revision)
        folder, sha = remote.snapshot(repo, revision)
        return LocalReader(folder, f"{repo}@{sha[:10]}", sha)
    raise HfMergeError(f"model path {ref} does not exist (give a checkpoint folder or a Hub id org/name)")


def open_checkpoint(ref: str, download: bool = False) -> Checkpoint:
    """Open a full checkpoint lazily (see :func:`open_reader`)."""
    reader = open_reader(ref, download)
    try:
        return Checkpoint(ref, reader)
    except BaseException:
        reader.close()
        raise
