"""Streaming sharded safetensors output, and the output folder that appears whole or not at all.

The full list of output tensors (names, shapes, dtypes) is known before any data is merged, so every
shard's header is written first and tensor bytes are then appended in order as they are produced, chunk
by chunk: no shard is ever held in memory. Files are named like transformers' own
(``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``).

:class:`OutputFolder` is where a merge writes: a lock next to OUT (one writer per folder), a staging folder
``.OUT.hfmerge-tmp-<pid>`` renamed onto OUT only when complete, leftovers of killed runs cleaned (or an
interrupted swap undone) by the next run into the same place, and a full disk reported in one line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import struct
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from hfmerge.errors import HfMergeError
from hfmerge.sources import DTYPE_NAMES, DTYPES

try:  # an advisory lock the kernel releases when its holder dies: flock on Unix, a byte lock on Windows
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
TMP_MARK, OLD_MARK, LOCK_MARK = ".hfmerge-tmp-", ".hfmerge-old-", ".hfmerge-lock"


class NoSpaceError(HfMergeError):
    """The disk filled up while writing (ENOSPC / EDQUOT)."""

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
            if e.errno in NO_SPACE:
                raise NoSpaceError(f"no space left on {self.folder.parent}: free space or choose another -o") from None
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


def human_bytes(n: int) -> str:
    """1234567 -> '1.23 MB' (decimal units, as ``--shard-size``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"


class FolderLock:
    """An exclusive lock on ``path`` (a file next to the folder it guards), released by the kernel if its holder
    dies. Refuses at once when another process holds it. The file is removed when released."""

    def __init__(self, path: Path, guarded: Path):
        self.path, self.guarded = path, guarded
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                holder = _read_pid(fd)
                os.close(fd)
                raise HfMergeError(f"another hfmerge run{f' (pid {holder})' if holder else ''} is writing "
                                   f"{self.guarded}: wait for it to finish or choose another -o")
            try:  # the previous holder may have removed the file between our open and our lock: lock it anew
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fcntl is not None:  # removed while still held, so no one locks a file that is about to vanish
            _unlink_quietly(self.path)
            os.close(fd)
        else:  # Windows cannot remove an open file
            os.close(fd)
            _unlink_quietly(self.path)


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, 1 << 20, os.SEEK_SET)  # a byte past the pid, so the pid stays readable
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:  # BlockingIOError (EWOULDBLOCK) on Unix, EACCES/EDEADLOCK on Windows
        return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0) if hasattr(os, "pread") else b""
        return int(text.split()[0]) if text.split() else None
    except (OSError, ValueError):
        return None


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class OutputFolder:
    """The folder a merge writes, appearing whole or not at all::

        with OutputFolder(out, overwrite=False) as output:  # lock; clean killed runs' leftovers; OUT must not exist
            tmp = output.stage(needed_bytes)                 # a staging folder next to OUT, after a free-space check
            ...write everything into tmp...
            output.publish()                                 # rename onto OUT (old OUT removed after the swap)

    On any error (or Ctrl-C / SIGTERM) the staging folder is removed and OUT is left as it was; a full disk
    becomes one line ("no space left on ..."). A run killed outright leaves only ``.OUT.hfmerge-tmp-<pid>``
    (or, killed inside the swap, ``.OUT.hfmerge-old-<pid>``): the next run into the same place removes the
    first and restores the second, under the lock, so no live run's folder is ever touched."""

    def __init__(self, out: str | Path, *, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.parent = self.out.absolute().parent
        self.tmp: Path | None = None
        self.needed = 0
        self._lock = FolderLock(self.parent / f".{self.out.name}{LOCK_MARK}", self.out)
        self._old_term = None

    def __enter__(self) -> OutputFolder:
        try:
            self.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except OSError as e:
            raise HfMergeError(f"cannot write in {self.parent}: {e.strerror or e}") from None
        try:
            self._recover()
            if self.out.exists() and not self.overwrite:
                raise HfMergeError(f"output {self.out} already exists: pass --overwrite or choose another folder")
        except BaseException:
            self._lock.release()
            raise
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_term = signal.signal(signal.SIGTERM, _terminate)
        return self

    def _leftovers(self, mark: str) -> list[Path]:
        prefix = f".{self.out.name}{mark}"
        return [p for p in self.parent.iterdir() if p.name.startswith(prefix) and p.name[len(prefix):].isdigit()]

    def _recover(self) -> None:
        """Remove what killed runs left (we hold the lock, so no live run owns any of it)."""
        for tmp in self._leftovers(TMP_MARK):
            shutil.rmtree(tmp, ignore_errors=True)
        olds = sorted(self._leftovers(OLD_MARK), key=lambda p: p.stat().st_mtime)
        if olds and not self.out.exists():  # killed between the two renames of a swap: put the old OUT back
            os.rename(olds.pop(), self.out)
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)

    def stage(self, needed_bytes: int = 0) -> Path:
        """A fresh staging folder, after checking the disk has room for ``needed_bytes``."""
        self.needed = needed_bytes
        free = shutil.disk_usage(self.parent).free
        if free < needed_bytes:
            raise self._no_space(free)
        self.tmp = self.parent / f".{self.out.name}{TMP_MARK}{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def publish(self) -> None:
        """Atomically put the staged folder at OUT (an existing OUT, with overwrite, is removed after the swap)."""
        tmp, out = self.tmp, self.out
        if out.exists():
            if not self.overwrite:
                raise HfMergeError(f"output {out} appeared during the merge: pass --overwrite or choose another folder")
            trash = self.parent / f".{out.name}{OLD_MARK}{os.getpid()}"
            os.rename(out, trash)
            os.rename(tmp, out)
            self.tmp = None
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
            self.tmp = None

    def _no_space(self, free: int | None = None) -> HfMergeError:
        free = shutil.disk_usage(self.parent).free if free is None else free
        short = self.needed - free if self.needed > free else self.needed
        need = f"free {human_bytes(short)}" if short > 0 else "free space"
        return HfMergeError(f"no space left on {self.parent}: {need} or choose another -o "
                            f"(the merge writes {human_bytes(self.needed)}, {human_bytes(free)} free)")

    def __exit__(self, typ, exc, tb) -> None:
        try:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
        finally:
            if self._old_term is not None:
                signal.signal(signal.SIGTERM, self._old_term)
                self._old_term = None
            self._lock.release()
        if isinstance(exc, NoSpaceError) or (isinstance(exc, OSError) and exc.errno in NO_SPACE):
            raise self._no_space() from None
        if isinstance(exc, OSError) and exc.filename is not None \
                and os.path.abspath(str(exc.filename)).startswith(str(self.parent)):
            raise HfMergeError(f"cannot write the output in {self.parent}: {exc.strerror or exc}") from None


TERM_GRACE_SECONDS = 10.0


def _terminate(signum, frame) -> None:
    """SIGTERM during a merge: unwind like Ctrl-C, so the staging folder is removed and the lock released. The
    default action is restored and fires again after a grace period, so a stuck unwind never outlives the signal
    (whatever it leaves is cleaned by the next run)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    timer = threading.Timer(TERM_GRACE_SECONDS, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt
