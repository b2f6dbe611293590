"""Reading Hub repos by byte range at scale: planned large ranges, several in flight, a bounded read-ahead.

A merge reads every input tensor in a known order. :class:`RemoteReader` turns that order (announced with
:meth:`RemoteReader.plan`) into *blocks*: runs of bytes contiguous in the file and in the read order, cut at
``block_size`` (tens of MiB). One :class:`Transfer` per process fetches the blocks of every source in read
order on ``connections`` worker threads (one HTTP connection each), holding at most ``read_ahead`` bytes in
memory across all sources; the engine's reads are served from those blocks, and a block is dropped as soon as
reading has moved past it. Each block is one ``/resolve`` call (the Hub answers it with a redirect to a storage
bridge signed for that exact range), so a GiB costs ≈ 1 GiB / block_size calls instead of one per chunk.

Blocks planned with ``spill`` (the tensors a top-k selection reads more than once) are written to a sparse
local file as they arrive and every later read of them is local: the Hub is read once.

Transfer faults are survived: 429 waits for the window the ``RateLimit`` header gives (parsed by
huggingface_hub; every worker waits), 5xx answers and dropped connections are retried with backoff asking only
for the bytes still missing, short bodies are detected, and a server that ignores ``Range`` (200 with the whole
body) is read once, streamed into a local copy of that file, never once per block. Counters (bytes, requests,
retries, rate-limit waits) go into merge_report.json.
"""

from __future__ import annotations

import atexit
import bisect
import heapq
import itertools
import mmap
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from huggingface_hub import HfApi, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, parse_ratelimit_headers

from hfmerge.errors import HfMergeError

MiB = 1 << 20
_STATS_LOCK = threading.Lock()
_FILE_IDS = itertools.count()  # unique names for local copies in the shared spill folder
DEFAULT_READ_AHEAD = 512 * MiB
DEFAULT_CONNECTIONS = 8
MAX_BLOCK = 32 * MiB
MIN_BLOCK = 256 << 10
HEAD_BYTES = 256 << 10  # one speculative range per file covers the safetensors header of most checkpoints
GAP_BYTES = 1 * MiB  # planned spans closer than this (and block/32) are fetched as one range (the gap is dropped)
MMAP_BYTES = MiB  # ranges at least this large are held in anonymous mappings
MAX_ATTEMPTS = 8  # per range, for 5xx / dropped connections without progress
MAX_RATE_LIMIT_WAIT = 3600.0
RETRY_STATUS = (500, 502, 503, 504)
TIMEOUT = httpx.Timeout(60.0, connect=30.0)

# what a merge needs: never pickles or optimizer states
MERGE_FILES = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "tokenizer*",
               "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template*",
               "adapter_config.json"]


def split_ref(ref: str) -> tuple[str, str | None]:
    """``org/name@revision`` -> (``org/name``, revision or None)."""
    repo, _, rev = ref.partition("@")
    return repo, rev or None


@contextmanager
def hub_errors(repo: str, revision: str | None = None):
    """Turn huggingface_hub's exceptions into one-line user errors."""
    try:
        yield
    except GatedRepoError:
        raise HfMergeError(f"{repo} is gated: request access on its Hub page, then log in (`hf auth login` or "
                           "HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HfMergeError(f"revision {revision!r} of {repo} does not exist on the Hub") from None
    except RepositoryNotFoundError:
        raise HfMergeError(f"Hub repo {repo} not found (check the name; if it is private, log in with "
                           "`hf auth login` or set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise HfMergeError(f"cannot reach the Hub for {repo} (offline?) and it is not in the local cache") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status == 401:
            raise HfMergeError(f"the Hub refused the token for {repo} (HTTP 401): log in again with "
                               "`hf auth login` or fix HF_TOKEN") from None
        raise HfMergeError(f"Hub request for {repo} failed (HTTP {status}): {str(e).splitlines()[0]}") from None
    except RuntimeError as e:  # the client wraps failed LFS uploads: "Error while uploading 'x' to the Hub."
        cause = e.__cause__ or e
        raise HfMergeError(f"upload to {repo} failed ({type(cause).__name__}: {' '.join(str(cause).split())}); "
                           "nothing was committed") from None
    except (OSError, httpx.HTTPError) as e:  # connection errors
        raise HfMergeError(f"cannot reach the Hub for {repo} ({type(e).__name__}: {' '.join(str(e).split())}); "
                           "nothing was changed") from None


def snapshot(repo: str, revision: str | None, local_dir: Path | None = None, repo_type: str = "model",
             patterns: list[str] | None = MERGE_FILES) -> tuple[Path, str]:
    """Download what merges need of ``repo`` (into the HF cache or ``local_dir``): (folder, commit sha)."""
    with hub_errors(repo, revision):
        sha = HfApi().repo_info(repo, revision=revision, repo_type=repo_type).sha
        path = snapshot_download(repo, revision=sha, repo_type=repo_type, allow_patterns=patterns,
                                 local_dir=local_dir)
    return Path(path), sha


# ---- the shared transfer: budget, connections, counters -------------------------------------------------------
@dataclass
class TransferStats:
    """What one source cost on the wire."""

    bytes_fetched: int = 0  # body bytes received (data, headers, small files, gaps, retried parts)
    requests: int = 0  # HTTP GETs sent to /resolve (a redirect to the storage bridge is followed within one)
    retries: int = 0  # requests repeated after a 5xx, a dropped connection or a short body
    rate_limit_waits: int = 0  # 429 answers waited out
    rate_limit_wait_seconds: float = 0.0
    whole_file_downloads: int = 0  # files read whole because the server ignored Range
    spilled_bytes: int = 0  # written to the local spill (read again from disk, not from the Hub)
    refetched_bytes: int = 0  # planned bytes fetched a second time (a read went back past a dropped block)

    def add(self, **counts) -> None:
        with _STATS_LOCK:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["rate_limit_wait_seconds"] = round(self.rate_limit_wait_seconds, 3)
        return d


@dataclass(eq=False)
class Block:
    """One planned range of one file: fetched by a worker, read by the engine, then dropped."""

    reader: RemoteReader
    file: str
    start: int
    end: int
    key: tuple  # read order: (rank of the first tensor in the plan, offset)
    index: int  # position in the reader's plan
    spill: bool
    state: str = "pending"  # pending | loading | ready | spilled | released | cancelled | failed
    data: bytearray | mmap.mmap | None = None
    error: BaseException | None = None
    fetched_once: bool = False
    wanted: bool = False  # a read is waiting for it: fetched even past the budget, so reads never deadlock

    @property
    def size(self) -> int:
        return self.end - self.start


class Transfer:
    """Worker threads fetching the planned blocks of every open :class:`RemoteReader`, in read order, within one
    memory budget (``read_ahead`` bytes held or in flight) shared by all sources."""

    def __init__(self, read_ahead: int = DEFAULT_READ_AHEAD, connections: int = DEFAULT_CONNECTIONS,
                 spill_dir: str | Path | None = None, max_block: int = MAX_BLOCK, head_bytes: int = HEAD_BYTES):
        self.max_block, self.head_bytes = int(max_block), int(head_bytes)
        self.min_block = min(MIN_BLOCK, self.max_block)
        if read_ahead < 2 * self.min_block:
            raise HfMergeError(f"--read-ahead must be at least {2 * self.min_block >> 10} KiB "
                               f"(got {read_ahead} bytes)")
        if connections < 1:
            raise HfMergeError(f"--connections must be at least 1 (got {connections})")
        self.read_ahead, self.connections = int(read_ahead), int(connections)
        self.cv = threading.Condition()
        self.readers: list[RemoteReader] = []
        self.heap: list[tuple[tuple, int, Block]] = []
        self.seq = itertools.count()
        self.in_memory = 0
        self.peak_in_memory = 0
        self.pause_until = 0.0  # set by a 429: every worker waits for the window
        self.workers: list[threading.Thread] = []
        self._spill_root = spill_dir
        self._spill_dir: Path | None = None

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def register(self, reader: RemoteReader) -> None:
        with self.cv:
            self.readers.append(reader)
            while len(self.workers) < self.connections:
                t = threading.Thread(target=self._work, name=f"hfmerge-fetch-{len(self.workers)}", daemon=True)
                self.workers.append(t)
                t.start()

    def unregister(self, reader: RemoteReader) -> None:
        with self.cv:
            for b in reader.blocks:
                self._drop(b)
            if reader in self.readers:
                self.readers.remove(reader)
            if not self.readers:
                self.heap.clear()
                if self._spill_dir is not None:
                    shutil.rmtree(self._spill_dir, ignore_errors=True)
                    self._spill_dir = None
            self.cv.notify_all()

    def spill_dir(self) -> Path:
        """A private temp folder for spilled ranges and whole-file copies: removed when the last source closes or
        the process exits; folders left by killed runs (their process is gone) are removed here."""
        with self.cv:
            if self._spill_dir is None:
                root = Path(self._spill_root or tempfile.gettempdir())
                for old in root.glob("hfmerge-spill-*-*"):
                    pid = old.name.split("-")[2]
                    if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                        shutil.rmtree(old, ignore_errors=True)
                self._spill_dir = Path(tempfile.mkdtemp(prefix=f"hfmerge-spill-{os.getpid()}-", dir=root))
                atexit.register(shutil.rmtree, self._spill_dir, True)
            return self._spill_dir

    def block_size(self) -> int:
        """Large ranges, yet every source's current block + a block per connection fit in the budget."""
        n = max(1, len(self.readers))
        size = self.read_ahead // (2 * n + self.connections)
        size -= size % min(64 << 10, self.min_block)
        return max(self.min_block, min(self.max_block, size))

    # ---- scheduling (callers hold self.cv) -----------------------------------------------------------------
    def _push(self, b: Block) -> None:
        heapq.heappush(self.heap, (b.key, next(self.seq), b))

    def _drop(self, b: Block) -> None:
        if b.state == "ready":
            self.in_memory -= b.size
        if b.state in ("pending", "ready"):
            b.state, b.data = "released", None
        elif b.state == "loading":
            b.state = "cancelled"  # the worker gives its memory back when the fetch ends

    def _next(self) -> Block | None:
        while self.heap and self.heap[0][2].state != "pending":
            heapq.heappop(self.heap)
        if not self.heap:
            return None
        b = self.heap[0][2]
        if not b.wanted and self.in_memory and self.in_memory + b.size > self.read_ahead:
            waiting = [e[2] for e in self.heap if e[2].wanted and e[2].state == "pending"]
            if not waiting:
                return None
            b = waiting[0]  # over the budget by at most this block: the blocks held are all still being read
            self.heap.remove(next(e for e in self.heap if e[2] is b))
            heapq.heapify(self.heap)
            return b
        heapq.heappop(self.heap)
        return b

    def _make_room(self, wanted: Block) -> None:
        """A read waits for ``wanted``: drop blocks fetched for later reads if the budget has no room for it."""
        while self.in_memory and self.in_memory + wanted.size > self.read_ahead:
            later = [b for r in self.readers for b in r.blocks if b.state == "ready" and b.key > wanted.key]
            if not later:
                return
            victim = max(later, key=lambda b: b.key)
            self.in_memory -= victim.size
            victim.state, victim.data = "pending", None
            self._push(victim)

    def _work(self) -> None:
        while True:
            with self.cv:
                b = self._next()
                while b is None:
                    self.cv.wait()
                    b = self._next()
                b.state = "loading"
                self.in_memory += b.size
                self.peak_in_memory = max(self.peak_in_memory, self.in_memory)
            try:
                data = b.reader.fetch(b.file, b.start, b.end)
                if b.spill:
                    b.reader.spill_write(b.file, b.start, data)
            except BaseException as e:  # handed to the read that needs the block
                with self.cv:
                    self.in_memory -= b.size
                    b.state, b.error = "failed", e
                    self.cv.notify_all()
                continue
            with self.cv:
                stats = b.reader.stats
                if b.fetched_once:
                    stats.add(refetched_bytes=b.size)
                b.fetched_once = True
                if b.spill:
                    self.in_memory -= b.size
                    b.reader.add_spilled(b.file, b.start, b.end)
                    stats.add(spilled_bytes=b.size)
                    if b.state == "loading":
                        b.state = "spilled"
                elif b.state != "loading":  # dropped while in flight (plan replaced, reader closed)
                    self.in_memory -= b.size
                else:
                    b.state, b.data = "ready", data
                del data  # the block owns it now: dropping the block frees it
                self.cv.notify_all()

    def wait_rate_limit(self) -> None:
        while (delay := self.pause_until - time.monotonic()) > 0:
            time.sleep(min(delay, 1.0))

    def totals(self) -> dict:
        out = TransferStats()
        for r in self.readers:
            for k, v in r.stats.__dict__.items():
                setattr(out, k, getattr(out, k) + v)
        return {**out.as_dict(), "read_ahead_bytes": self.read_ahead, "connections": self.connections,
                "block_bytes": self.block_size(), "peak_buffered_bytes": self.peak_in_memory}


_transfer: Transfer | None = None
_settings: dict = {}
_stale = False


def configure(**settings) -> None:
    """Settings of the transfer used by the Hub sources opened from now on (``read_ahead``, ``connections``,
    ``spill_dir``, ``max_block``, ``head_bytes``: see :class:`Transfer`); None keeps the default."""
    global _stale
    _settings.clear()
    _settings.update({k: v for k, v in settings.items() if v is not None})
    Transfer(**_settings)  # validates
    _stale = True


def current_transfer() -> Transfer:
    """The process's transfer, shared by every open Hub source (created on first use, renewed once idle after
    :func:`configure`)."""
    global _transfer, _stale
    if _transfer is None or (_stale and not _transfer.readers):
        _transfer, _stale = Transfer(**_settings), False
    return _transfer


# ---- one Hub repo ---------------------------------------------------------------------------------------------
class _Cut(Exception):
    """The body ended early (dropped connection or short body): retry for the remainder."""


@dataclass
class _FileState:
    head: bytes | None = None  # the first HEAD_BYTES (headers are parsed from it)
    whole: Path | None = None  # a complete local copy (the server ignored Range)
    whole_lock: threading.Lock = field(default_factory=threading.Lock)
    spilled: list[tuple[int, int]] = field(default_factory=list)  # sorted disjoint intervals in the spill file
    spill_path: Path | None = None


class RemoteReader:
    """Byte ranges of a Hub repo pinned to a commit sha (see the module docstring)."""

    def __init__(self, repo: str, revision: str | None = None, repo_type: str = "model",
                 transfer: Transfer | None = None):
        with hub_errors(repo, revision):
            info = HfApi().repo_info(repo, revision=revision, repo_type=repo_type, files_metadata=True)
        self.repo, self.repo_type, self.revision = repo, repo_type, info.sha
        self.label = f"{repo}@{info.sha[:10]}"
        self.sizes = {s.rfilename: s.size for s in info.siblings or []}
        self.stats = TransferStats()
        self.transfer = transfer or current_transfer()
        self.blocks: list[Block] = []
        self._by_file: dict[str, list[Block]] = {}  # planned blocks of each file, sorted by start
        self._cursor = 0  # index in self.blocks of the furthest block read so far
        self._files: dict[str, _FileState] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.transfer.register(self)

    @property
    def bytes_fetched(self) -> int:
        return self.stats.bytes_fetched

    def transfer_stats(self) -> dict:
        return self.stats.as_dict()

    def list_files(self) -> list[str]:
        return sorted(self.sizes)

    def _state(self, file: str) -> _FileState:
        with self._lock:
            return self._files.setdefault(file, _FileState())

    # ---- planning ---------------------------------------------------------------------------------------------
    def plan(self, spans: Iterable[tuple[int, str, int, int, bool]]) -> None:
        """The ranges the next reads will ask for, in read order: ``(rank, file, start, length, spill)``, where
        ``rank`` orders the reads of all sources together (the engine's position of the tensor). Replaces the
        previous plan; bytes already spilled are not fetched again."""
        tr = self.transfer
        size = tr.block_size()
        gap = min(GAP_BYTES, size // 32)
        runs: list[list] = []  # [file, start, end, spill, rank]
        for rank, file, start, length, spill in spans:
            if length <= 0:
                continue
            end = start + length
            for a, b in self._unspilled(file, start, end):
                last = runs[-1] if runs else None
                if (last and last[0] == file and last[3] == spill and 0 <= a - last[2] <= gap
                        and a >= last[1]):
                    last[2] = b
                else:
                    runs.append([file, a, b, spill, rank])
        blocks: list[Block] = []
        for file, a, b, spill, rank in runs:
            for s in range(a, b, size):
                blocks.append(Block(self, file, s, min(b, s + size), (rank, s), len(blocks), spill))
        with tr.cv:
            for old in self.blocks:
                tr._drop(old)
            self.blocks, self._cursor = blocks, 0
            self._by_file = {}
            for blk in blocks:
                self._by_file.setdefault(blk.file, []).append(blk)
            for lst in self._by_file.values():
                lst.sort(key=lambda blk: blk.start)
            for blk in blocks:
                tr._push(blk)
            for file, st in self._files.items():
                if st.head is not None and len(st.head) < (self.sizes.get(file) or 0):
                    st.head = None  # headers are parsed by now (a head that is the whole file stays)
            tr.cv.notify_all()

    def _unspilled(self, file: str, start: int, end: int) -> list[tuple[int, int]]:
        st = self._files.get(file)
        if st is not None and st.head is not None and len(st.head) >= (self.sizes.get(file) or 0):
            return []  # the whole (small) file is in memory already
        if st is None or not st.spilled:
            return [(start, end)]
        out, pos = [], start
        for a, b in st.spilled:
            if b <= pos or a >= end:
                continue
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < end:
            out.append((pos, end))
        return out

    # ---- reads ------------------------------------------------------------------------------------------------
    def read_range(self, file: str, offset: int, length: int) -> bytearray:
        out = bytearray(length)
        pos, end = offset, offset + length
        while pos < end:
            pos += self._serve(file, pos, end, memoryview(out)[pos - offset:])
        return out

    def _serve(self, file: str, pos: int, end: int, dest: memoryview) -> int:
        """Copy the bytes from ``pos`` (up to ``end``) that one source can give into ``dest``; returns how many."""
        st = self._state(file)
        if st.whole is not None:
            return _pread_into(st.whole, pos, dest[:end - pos])
        got = self._from_spill(st, pos, end, dest)
        if got:
            return got
        if st.head is not None and pos < len(st.head):
            n = min(end, len(st.head)) - pos
            dest[:n] = st.head[pos:pos + n]
            return n
        blk = self._block_at(file, pos)
        if blk is None:
            limit = self._next_block_start(file, pos, end)
            head = self.transfer.head_bytes
            if pos < head and not self.blocks and file.endswith(".safetensors"):
                head_end = min(head, self.sizes.get(file) or head)
                if limit <= head_end:
                    st.head = bytes(self.fetch(file, 0, head_end))
                    return self._serve(file, pos, end, dest)
            data = self.fetch(file, pos, limit)
            dest[:limit - pos] = data
            return limit - pos
        return self._from_block(blk, pos, end, dest)

    def _from_spill(self, st: _FileState, pos: int, end: int, dest: memoryview) -> int:
        with self.transfer.cv:
            spilled = st.spilled
            i = bisect.bisect_right(spilled, (pos, float("inf"))) - 1
            if i < 0 or spilled[i][1] <= pos:
                return 0
            stop = min(end, spilled[i][1])
        return _pread_into(st.spill_path, pos, dest[:stop - pos])

    def _block_at(self, file: str, pos: int) -> Block | None:
        lst = self._by_file.get(file)
        if not lst:
            return None
        i = bisect.bisect_right([b.start for b in lst], pos) - 1
        return lst[i] if i >= 0 and lst[i].end > pos else None

    def _next_block_start(self, file: str, pos: int, end: int) -> int:
        for b in self._by_file.get(file, ()):
            if b.start > pos:
                return min(end, b.start)
        return end

    def _from_block(self, blk: Block, pos: int, end: int, dest: memoryview) -> int:
        tr = self.transfer
        with tr.cv:
            self._advance(blk)
            while blk.state not in ("ready", "spilled"):
                if blk.state == "failed":
                    err, blk.error, blk.state = blk.error, None, "pending"
                    tr._push(blk)  # a later read may try again
                    raise err
                if blk.state == "released":  # read again after it was dropped: fetch it (and what follows) anew
                    self._rewind(blk)
                if blk.state == "pending":
                    blk.wanted = True
                    tr._make_room(blk)
                    tr.cv.notify_all()
                tr.cv.wait()
            data = blk.data
        n = min(end, blk.end) - pos
        if data is None:  # spilled
            return _pread_into(self._files[blk.file].spill_path, pos, dest[:n])
        dest[:n] = memoryview(data)[pos - blk.start:pos - blk.start + n]
        return n

    def _advance(self, blk: Block) -> None:
        """Reading reached ``blk``: drop the blocks before it (reads go forward through the plan)."""
        if blk.index > self._cursor:
            for b in self.blocks[self._cursor:blk.index]:
                if not b.spill:
                    self.transfer._drop(b)
            self._cursor = blk.index
            self.transfer.cv.notify_all()

    def _rewind(self, blk: Block) -> None:
        self._cursor = blk.index
        for b in self.blocks[blk.index:]:
            if b.state == "released":
                b.state = "pending"
                self.transfer._push(b)
        self.transfer.cv.notify_all()

    # ---- spill ------------------------------------------------------------------------------------------------
    def spill_write(self, file: str, start: int, data: bytes | bytearray) -> None:
        st = self._state(file)
        with self._lock:
            if st.spill_path is None:
                st.spill_path = self.transfer.spill_dir() / f"{next(_FILE_IDS)}-{Path(file).name}"
                st.spill_path.touch()
        fd = os.open(st.spill_path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
        try:
            _pwrite_all(fd, data, start)
        finally:
            os.close(fd)

    def add_spilled(self, file: str, start: int, end: int) -> None:
        """Register spilled bytes (caller holds the transfer lock)."""
        st = self._files[file]
        iv = sorted([*st.spilled, (start, end)])
        merged: list[tuple[int, int]] = []
        for a, b in iv:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        st.spilled = merged

    # ---- HTTP -------------------------------------------------------------------------------------------------
    def _url(self, file: str) -> str:
        return hf_hub_url(self.repo, file, revision=self.revision, repo_type=self.repo_type)

    def fetch(self, file: str, start: int, end: int) -> bytearray | mmap.mmap:
        """Bytes ``[start, end)`` of ``file``, surviving 429, 5xx, dropped connections and short bodies. Large
        ranges land in anonymous mappings, returned to the OS as soon as they are dropped (heap blocks of this
        size would stay resident)."""
        buf = mmap.mmap(-1, end - start) if end - start >= MMAP_BYTES else bytearray(end - start)
        done, attempts = 0, 0
        while done < len(buf):
            st = self._state(file)
            if st.whole is not None:
                _pread_into(st.whole, start + done, memoryview(buf)[done:])
                return buf
            try:
                done += self._get_into(file, start + done, end, memoryview(buf)[done:])
                attempts = 0
            except _Retry as r:
                done += r.received
                if not r.counted:  # a rate-limit wait is not a failure
                    continue
                attempts = 0 if r.received else attempts + 1
                if attempts >= MAX_ATTEMPTS:
                    raise HfMergeError(f"fetching {self.label}/{file} failed {attempts} times in a row "
                                       f"({r.reason}); try again later or use --download") from None
                self.stats.add(retries=1)
                time.sleep(min(8.0, 0.25 * 2 ** max(0, attempts - 1)))
        return buf

    def _get_into(self, file: str, start: int, end: int, dest: memoryview) -> int:
        """One GET for ``[start, end)``; returns bytes written into ``dest`` or raises :class:`_Retry`."""
        tr = self.transfer
        tr.wait_rate_limit()
        size = self.sizes.get(file)
        ranged = not (start == 0 and size is not None and end >= size)
        headers = build_hf_headers()
        if ranged:
            headers["Range"] = f"bytes={start}-{end - 1}"
        self.stats.add(requests=1)
        received = 0
        try:
            with get_session().stream("GET", self._url(file), headers=headers, timeout=TIMEOUT,
                                      follow_redirects=True) as resp:
                if resp.status_code == 429:
                    self._rate_limited(resp)
                    raise _Retry(0, "HTTP 429", counted=False)
                if resp.status_code in RETRY_STATUS:
                    raise _Retry(0, f"HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    resp.read()
                    with hub_errors(self.repo, self.revision):
                        hf_raise_for_status(resp)
                if resp.status_code == 200 and ranged:  # Range ignored: this body is the whole file
                    return self._whole_from(file, resp, start, end, dest)
                if resp.status_code == 206:
                    m = re.match(r"bytes (\d+)-(\d+)/", resp.headers.get("Content-Range", ""))
                    if m is None or int(m.group(1)) != start:
                        raise _Retry(0, f"bad Content-Range {resp.headers.get('Content-Range')!r}")
                for piece in resp.iter_bytes(1 << 20):
                    n = min(len(piece), len(dest) - received)
                    dest[received:received + n] = piece[:n]
                    received += n
                    self.stats.add(bytes_fetched=len(piece))
                    if received == len(dest):
                        break
        except _Retry as r:
            r.received = received if not r.received else r.received
            raise
        except httpx.HTTPError as e:  # dropped connection, timeout, truncated body
            raise _Retry(received, f"{type(e).__name__}") from None
        if received < len(dest):
            raise _Retry(received, "short body")
        return received

    def _rate_limited(self, resp: httpx.Response) -> None:
        info = parse_ratelimit_headers(resp.headers)
        wait = float(info.reset_in_seconds) if info is not None else None
        if wait is None:
            retry_after = resp.headers.get("Retry-After", "")
            wait = float(retry_after) if retry_after.strip().isdigit() else 5.0
        wait = max(0.05, wait) + 0.05
        tr = self.transfer
        with tr.cv:
            tr.pause_until = max(tr.pause_until, time.monotonic() + wait)
        self.stats.add(rate_limit_waits=1, rate_limit_wait_seconds=wait)
        if self.stats.rate_limit_wait_seconds > MAX_RATE_LIMIT_WAIT:
            raise HfMergeError(f"the Hub's rate limit kept {self.label} waiting over {MAX_RATE_LIMIT_WAIT:.0f} s; "
                               "try later, log in for a higher limit, or use --download")

    def _whole_from(self, file: str, resp: httpx.Response, start: int, end: int, dest: memoryview) -> int:
        """The server answered 200 to a Range request: stream this body (the whole file) into a local copy once,
        and serve this and every later range of the file from that copy."""
        st = self._state(file)
        if not st.whole_lock.acquire(blocking=False):  # another worker is already streaming it: wait for it
            with st.whole_lock:
                pass
        else:
            try:
                if st.whole is None:
                    path = self.transfer.spill_dir() / f"whole-{next(_FILE_IDS)}-{Path(file).name}"
                    n = 0
                    with open(path, "wb") as fh:
                        for piece in resp.iter_bytes(1 << 20):
                            fh.write(piece)
                            n += len(piece)
                            self.stats.add(bytes_fetched=len(piece))
                    if self.sizes.get(file) is not None and n != self.sizes[file]:
                        path.unlink(missing_ok=True)
                        raise _Retry(0, f"whole-file body of {n} bytes, expected {self.sizes[file]}")
                    self.stats.add(whole_file_downloads=1)
                    st.whole = path
            finally:
                st.whole_lock.release()
        if st.whole is None:
            raise _Retry(0, "whole-file download failed")
        return _pread_into(st.whole, start, dest[:end - start])

    def read_file(self, file: str) -> bytes | None:
        if file not in self.sizes:
            return None
        size = self.sizes[file]
        return bytes(self.fetch(file, 0, size)) if size else b""

    def copy_to(self, file: str, dest: Path) -> None:
        size = self.sizes.get(file) or 0
        with open(dest, "wb") as fh:
            for a in range(0, size, MAX_BLOCK):
                fh.write(self.fetch(file, a, min(size, a + MAX_BLOCK)))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.transfer.unregister(self)


class _Retry(Exception):
    def __init__(self, received: int, reason: str, counted: bool = True):
        super().__init__(reason)
        self.received, self.reason, self.counted = received, reason, counted


# ---- portable positional file I/O ------------------------------------------------------------------------------
def _pread_into(path: Path | None, offset: int, dest: memoryview) -> int:
    if path is None:
        raise HfMergeError("internal error: spilled bytes without a spill file")
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        n = fh.readinto(dest)
    if n != len(dest):
        raise HfMergeError(f"local copy {path} is truncated (wanted {len(dest)} bytes at {offset})")
    return n


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate it there: leave the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: leave it
    return True


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    if hasattr(os, "pwrite"):
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    else:  # Windows: no pwrite
        os.lseek(fd, offset, os.SEEK_SET)
        while view:
            n = os.write(fd, view)
            view = view[n:]


def transfer_report(readers: Iterable[object]) -> dict | None:
    """The ``transfer`` section of merge_report.json: totals over the Hub sources of a merge, or None."""
    remote = [r for r in readers if isinstance(r, RemoteReader)]
    if not remote:
        return None
    out = remote[0].transfer.totals()
    spilled, refetched = out["spilled_bytes"], out["refetched_bytes"]
    out["reads_again"] = ("from the local spill" if spilled and not refetched else
                          "fetched again" if refetched and not spilled else
                          "spill and fetched again" if spilled else "none (every byte read once)")
    return out
