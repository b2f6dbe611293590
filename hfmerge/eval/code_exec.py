"""Run model-written programs the way bigcode-evaluation-harness scores them (a program passes iff it runs to
its end without raising), each in its own interpreter, so that none can hang or take down the evaluation.

Each program runs in a fresh ``python -I`` (isolated: no user site, no PYTHON* variables) in a temporary working
directory, with a minimal environment (no tokens, no proxies), in its own session and process group, under
resource limits (address space, file size, CPU seconds, number of processes, no core dumps) and a wall-clock
timeout after which the whole process group is killed; the group is killed after every run, so forked children
never outlive their program. Like bigcode's ``reliability_guard``, ``exit``/``quit`` count as failures and the
process-control functions that would let a program leave its group or signal others are removed.

This is not a security boundary (a determined program can still reach the file system and the network):
running model-written code is an explicit opt-in (``hfmerge eval --allow-code-execution``).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import comb
from pathlib import Path

from hfmerge.errors import HfMergeError

MEMORY_BYTES = 4 << 30  # evalplus's limit; bigcode sets none
FILE_BYTES = 64 << 20
EXTRA_PROCESSES = 16  # on top of the user's current count: forks beyond fail with EAGAIN

_HARNESS = r'''
import builtins, os, resource, sys
mem, fsize, cpu, nproc = (int(x) for x in sys.argv[1:5])
for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem), (resource.RLIMIT_FSIZE, fsize),
                 (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, nproc)):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError):
        pass
token = sys.stdin.readline().strip()
sys.stdin.close()
source = open(sys.argv[5], encoding="utf-8").read()
out = os.fdopen(os.dup(1), "w")
builtins.exit = builtins.quit = None
for name in ("kill", "killpg", "setsid", "setpgid", "setpgrp"):
    if hasattr(os, name):
        setattr(os, name, None)
try:
    exec(compile(source, "program.py", "exec"), {})
except BaseException as e:
    sys.stderr.write(f"failed: {type(e).__name__}: {e}\n")
    sys.stderr.flush()
    os._exit(1)
out.write(token + "\n")
out.flush()
os._exit(0)
'''

_ENABLED = False


def allow(enabled: bool = True) -> None:
    """Opt in (or out) of running model-written code in this process (``--allow-code-execution``)."""
    global _ENABLED
    _ENABLED = enabled


def allowed() -> bool:
    return _ENABLED


REFUSAL = ("coding tasks run model-written programs on this machine: pass --allow-code-execution to opt in "
           "(each runs in its own limited, timed-out process; not a security sandbox)")


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # "passed" | "failed" | "timed out"
    seconds: float
    detail: str = ""


def _user_processes() -> int:
    uid = os.getuid()
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


def _kill_group(pgid: int) -> None:
    for _ in range(50):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def run_program(source: str, timeout: float, *, memory_bytes: int = MEMORY_BYTES) -> ExecResult:
    """Run one program; passed iff it ran to its end (bigcode's rule), within ``timeout`` wall seconds."""
    if not _ENABLED:
        raise HfMergeError(REFUSAL)
    t0 = time.perf_counter()
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="hfmerge-exec-") as tmp:
        program, harness = Path(tmp) / "program.py", Path(tmp) / ".harness.py"
        program.write_text(source, encoding="utf-8")
        harness.write_text(_HARNESS, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        limits = [str(memory_bytes), str(FILE_BYTES), str(int(timeout) + 1), str(_user_processes() + EXTRA_PROCESSES)]
        with open(Path(tmp) / ".stdout", "wb") as out, open(Path(tmp) / ".stderr", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-I", str(harness), *limits, str(program)], cwd=tmp, env=env,
                                    stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True)
            try:
                try:
                    proc.stdin.write((token + "\n").encode())
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
                try:
                    code = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    code = None
            finally:
                _kill_group(proc.pid)
                proc.wait()
        seconds = round(time.perf_counter() - t0, 3)
        if code is None:
            return ExecResult(False, "timed out", seconds)
        stdout = (Path(tmp) / ".stdout").read_bytes()[-4096:].decode(errors="replace")
        detail = (Path(tmp) / ".stderr").read_bytes()[-2000:].decode(errors="replace").strip()
    passed = code == 0 and stdout.rstrip().endswith(token)
    return ExecResult(passed, "passed" if passed else "failed", seconds, "" if passed else detail[-500:])


def run_programs(sources: Sequence[str], timeout: float, *, workers: int | None = None,
                 progress: bool = True, desc: str = "run programs") -> list[ExecResult]:
    """Run many programs, ``workers`` at a time (default: the CPU count), in order of the input."""
    if not _ENABLED:
        raise HfMergeError(REFUSAL)
    from tqdm.auto import tqdm

    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(lambda s: run_program(s, timeout), sources), total=len(sources), desc=desc,
                         disable=not progress or len(sources) < 8))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct of ``n`` samples: 1 − C(n−c, k) / C(n, k)
    (Chen et al. 2021, the estimator bigcode and MergeBench use)."""
    if k > n:
        raise HfMergeError(f"pass@{k} needs at least {k} samples per problem (got {n})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
