"""Hostile inputs and failures: corrupt or quantized checkpoints are refused in one line before any output
exists; a merge killed, interrupted, out of disk or racing another leaves nothing half-written; a push killed
mid-upload leaves the repo as it was; a Hub answering with faults gives the local merge's bytes or one line."""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hfmerge import remote, writer
from hfmerge.config import MergeConfig, ModelRef
from hfmerge.engine import merge
from hfmerge.errors import HfMergeError
from hfmerge.sources import LocalReader, open_checkpoint, parse_header
from hfmerge.writer import OutputFolder
from tests.faultproxy import Fault, FaultProxy, every, randomly
from tests.tiny import publish

USER = "hfmerge-user"
ENV = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
WEIGHT_FILES = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg, msg
    return msg


def soup(base: Path, experts: list[Path]) -> MergeConfig:
    return MergeConfig("soup", str(base), [ModelRef(str(e)) for e in experts])


@pytest.fixture(scope="module")
def reference(family, tmp_path_factory):
    """The tiny llama family and its soup merged from local folders (the bytes every other run must give)."""
    base, experts = family("llama")
    out = tmp_path_factory.mktemp("ref") / "soup"
    merge(soup(base, experts), out, progress=False)
    return base, experts, out


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- safetensors header rules ----------------------------------------------------------------------------------

def valid_file() -> tuple[dict, bytes]:
    """A valid safetensors file's header (as a dict) and data area: a BF16 [4, 8], an F32 [3], an I64 [2]."""
    import io

    buf = io.BytesIO()
    tensors = {"a": torch.arange(32, dtype=torch.bfloat16).reshape(4, 8), "b": torch.ones(3), "c": torch.arange(2)}
    from safetensors.torch import save

    buf.write(save(tensors, metadata={"format": "pt"}))
    blob = buf.getvalue()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def build(header: dict | None, data: bytes, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _mut(fn):
    header, data = valid_file()
    return fn(header, data)


def _set(tensor: str, key: str, value):
    def f(h, d):
        h[tensor][key] = value
        return build(h, d)
    return f


def _del(tensor: str, key: str):
    def f(h, d):
        del h[tensor][key]
        return build(h, d)
    return f


def _offsets(h: dict, name: str) -> list[int]:
    return h[name]["data_offsets"]


def _overlap(h, d):  # the file holds c, b, a in that order (safetensors sorts by alignment)
    c_end = _offsets(h, "c")[1]
    h["b"]["data_offsets"] = [c_end - 4, c_end + 8]
    return build(h, d)


def _gap(h, d):
    b, e = _offsets(h, "a")
    h["a"]["data_offsets"] = [b + 8, e + 8]
    return build(h, d[:b] + b"\0" * 8 + d[b:])


def _duplicate(h, d):
    text = json.dumps(h)
    dup = text[:-1] + ', "b": ' + json.dumps(h["b"]) + "}"
    return build(None, d, dup.encode())


def _sub_byte(h, d):
    h["c"]["dtype"], h["c"]["shape"] = "F4", [3]
    return build(h, d)


def _swap(h, d):
    h["b"]["data_offsets"] = h["b"]["data_offsets"][::-1]
    return build(h, d)


HEADER_CASES = {  # name -> (corrupt file bytes, what the one-line refusal says)
    "not an object": (lambda: _mut(lambda h, d: build(None, d, b"[1, 2]")), "not an object"),
    "not JSON": (lambda: _mut(lambda h, d: build(None, d, b"{not json")), "not valid JSON"),
    "not UTF-8": (lambda: _mut(lambda h, d: build(None, d, b'{"\xff": 1}')), "not UTF-8"),
    "entry without dtype": (lambda: _mut(_del("a", "dtype")), "tensor 'a' has no dtype"),
    "entry not an object": (lambda: _mut(lambda h, d: build({**h, "a": 5}, d)), "tensor 'a' is described by"),
    "unknown dtype": (lambda: _mut(_set("a", "dtype", "F128")), "tensor 'a' has unknown dtype 'F128'"),
    "negative dimension": (lambda: _mut(_set("a", "shape", [-4, 8])), "not a list of non-negative integers"),
    "float dimension": (lambda: _mut(_set("a", "shape", [4.0, 8])), "not a list of non-negative integers"),
    "bool dimension": (lambda: _mut(_set("a", "shape", [True, 8])), "not a list of non-negative integers"),
    "three offsets": (lambda: _mut(_set("a", "data_offsets", [0, 64, 64])), "not two non-negative integers"),
    "offsets end before begin": (lambda: _mut(_swap), "tensor 'b' has data_offsets [28, 16] that end before"),
    "span shorter than shape x dtype": (lambda: _mut(_set("a", "shape", [4, 9])),
                                        "[28, 92] spanning 64 bytes but shape [4, 9] of BF16 needs 72"),
    "span longer than shape x dtype": (lambda: _mut(_set("a", "shape", [4, 7])), "needs 56"),
    "overlapping tensors": (lambda: _mut(_overlap), "tensor 'b' at [12, 24] overlaps tensor 'c' at [0, 16]"),
    "gap between tensors": (lambda: _mut(_gap),
                            "8 bytes after tensor 'b' belong to no tensor (tensor 'a' starts at 36)"),
    "trailing bytes": (lambda: _mut(lambda h, d: build(h, d + b"\0" * 8)), "8 bytes belong to no tensor"),
    "truncated data": (lambda: _mut(lambda h, d: build(h, d[:-5])), "past the end of the file (truncated"),
    "duplicate tensor name": (lambda: _mut(_duplicate), "'b' appears twice"),
    "metadata not strings": (lambda: _mut(lambda h, d: build({**h, "__metadata__": {"format": 1}}, d)),
                             "__metadata__ is not a map of strings"),
    "sub-byte dtype not whole bytes": (lambda: _mut(_sub_byte), "not a whole number of bytes"),
    "header length past the file": (lambda: _mut(lambda h, d: struct.pack("<Q", 10**6) + b"{}"),
                                    "runs past the end of the"),
    "header length over 100 MB": (lambda: _mut(lambda h, d: struct.pack("<Q", 200_000_000) + b"{}" * 8),
                                  "exceeds the safetensors limit"),
    "shorter than 8 bytes": (lambda: b"\x01\x02\x03", "shorter than the 8-byte header length"),
}
LIBRARY_ACCEPTS = {"duplicate tensor name"}  # safetensors keeps the last entry; hfmerge refuses the ambiguity


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_every_header_rule_is_refused_in_one_line(case, tmp_path):
    make, expected = HEADER_CASES[case]
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(make())
    with pytest.raises(HfMergeError) as err:
        parse_header(LocalReader(folder), "model.safetensors")
    msg = one_line(err)
    assert expected in msg and f"{folder}/model.safetensors" in msg, msg
    try:  # the rule is the format's own: the safetensors library refuses the same file
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            list(f.keys())
        library_refuses = False
    except Exception:
        library_refuses = True
    assert library_refuses != (case in LIBRARY_ACCEPTS)


def test_valid_header_parses_like_the_library(tmp_path):
    header, data = valid_file()
    (tmp_path / "model.safetensors").write_bytes(build(header, data))
    infos = parse_header(LocalReader(tmp_path), "model.safetensors")
    reader = LocalReader(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(infos)
        for name, info in infos.items():
            t = f.get_tensor(name)
            assert list(t.shape) == list(info.shape)
            assert bytes(reader.read_range("model.safetensors", info.start, info.nbytes)) == \
                t.contiguous().view(torch.uint8).numpy().tobytes()


def _corrupt_expert(expert: Path, dst: Path, case: str) -> Path:
    """A copy of ``expert`` whose model.safetensors has one header rule broken (on its real tensors)."""
    copy_model(expert, dst)
    blob = (dst / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header, data = json.loads(blob[8:8 + n]), blob[8 + n:]
    name = next(k for k in header if k != "__metadata__" and "layers.0.mlp.up_proj" in k)
    if case == "short span":
        header[name]["shape"] = [header[name]["shape"][0] + 1, *header[name]["shape"][1:]]
    elif case == "overlap":
        b, e = header[name]["data_offsets"]
        header[name]["data_offsets"] = [b - 2, e - 2]
    elif case == "no dtype":
        del header[name]["dtype"]
    (dst / "model.safetensors").write_bytes(build(header, data))
    return dst


@pytest.mark.parametrize("case", ["short span", "overlap", "no dtype"])
def test_merge_with_a_corrupt_expert_leaves_nothing(reference, tmp_path, case):
    base, experts, _ = reference
    bad = _corrupt_expert(experts[0], tmp_path / "bad", case)
    out = tmp_path / "outs" / "m"
    with pytest.raises(HfMergeError) as err:
        merge(soup(base, [bad, experts[1]]), out, progress=False)
    msg = one_line(err)
    assert "model.safetensors" in msg and "layers.0.mlp.up_proj" in msg
    assert not out.exists() and list(out.parent.iterdir()) == []


# ---- quantized and non-float checkpoints --------------------------------------------------------------------------

def _retype(folder: Path, dtype: torch.dtype, pattern: str = "layers.0.self_attn.q_proj") -> str:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    name = next(n for n in tensors if pattern in n)
    tensors[name] = tensors[name].to(dtype) if dtype.is_floating_point else (tensors[name] * 100).to(dtype)
    save_file(tensors, path, metadata={"format": "pt"})
    return name


def test_quantization_config_is_refused(reference, tmp_path):
    base, experts, _ = reference
    q = copy_model(experts[0], tmp_path / "fp8-expert")
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (q / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "outs" / "m"
    with pytest.raises(HfMergeError) as err:
        merge(soup(base, [q, experts[1]]), out, progress=False)
    msg = one_line(err)
    assert f"{q}/config.json has a quantization_config (quant_method fp8)" in msg
    assert "not supported" in msg and "dequantize it to bf16 first" in msg
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.uint8])
def test_non_float_expert_tensor_is_refused(reference, tmp_path, dtype):
    base, experts, _ = reference
    q = copy_model(experts[0], tmp_path / "q")
    name = _retype(q, dtype)
    out = tmp_path / "outs" / "m"
    with pytest.raises(HfMergeError) as err:
        merge(soup(base, [experts[1], q]), out, progress=False)
    msg = one_line(err)
    assert f"{q}/model.safetensors: tensor {name} is" in msg and "where the base" in msg
    assert "merging quantized weights is not supported" in msg
    assert list(out.parent.iterdir()) == []


def test_float8_base_is_refused(reference, tmp_path):
    base, experts, _ = reference
    qbase = copy_model(base, tmp_path / "qbase")
    name = _retype(qbase, torch.float8_e4m3fn)
    with pytest.raises(HfMergeError) as err:
        merge(soup(qbase, experts[:2]), tmp_path / "outs" / "m", progress=False)
    assert f"tensor {name} is F8_E4M3 (quantized)" in one_line(err)


def test_cli_refuses_a_quantized_expert_in_one_line(reference, tmp_path):
    base, experts, _ = reference
    q = copy_model(experts[0], tmp_path / "q")
    _retype(q, torch.float8_e4m3fn)
    out = tmp_path / "outs" / "m"
    res = subprocess.run([sys.executable, "-m", "hfmerge.cli", "merge", "--method", "soup", "--base", str(base),
                          "--models", str(q), str(experts[1]), "-o", str(out), "-q"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "dequantize" in lines[0], res.stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


# ---- crash safety: killed, interrupted, racing ------------------------------------------------------------------

PAUSING_CLI = r"""
import sys, time, pathlib
from hfmerge import writer
marker, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
real_write = writer.ShardWriter.write
def write(self, data):
    real_write(self, data)
    if not marker.exists():
        self._drain()  # the first tensor bytes are in the staging folder
        marker.write_text("writing")
        t0 = time.monotonic()
        while not go.exists() and time.monotonic() - t0 < 300:  # paused until the test says go
            time.sleep(0.05)
writer.ShardWriter.write = write
sys.argv = ["hfmerge", *sys.argv[3:]]
from hfmerge.cli import main
main()
"""

KILLED_IN_SWAP_CLI = r"""
import os, signal, sys
real_rename = os.rename
def rename(src, dst, *a, **k):
    real_rename(src, dst, *a, **k)
    if ".hfmerge-old-" in str(dst):  # OUT moved aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename
sys.argv = ["hfmerge", *sys.argv[1:]]
from hfmerge.cli import main
main()
"""


def merge_args(base: Path | str, experts: list[Path] | list[str], out: Path, *extra: str) -> list[str]:
    return ["merge", "--method", "soup", "--base", str(base), "--models", *map(str, experts), "-o", str(out), "-q",
            *extra]


def start_pausing(tmp_path: Path, args: list[str], tag: str = "m") -> tuple[subprocess.Popen, Path, Path]:
    """A CLI merge that pauses after its first bytes are written (``marker`` appears) until ``go`` exists."""
    marker, go = tmp_path / f"writing-{tag}", tmp_path / f"go-{tag}"
    proc = subprocess.Popen([sys.executable, "-c", PAUSING_CLI, str(marker), str(go), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    return proc, marker, go


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.monotonic()
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "the merge never started writing"
        time.sleep(0.05)


def test_sigkill_leaves_no_output_and_the_next_run_cleans_up(reference, tmp_path):
    base, experts, ref = reference
    out = tmp_path / "outs" / "m"
    proc, marker, _ = start_pausing(tmp_path, merge_args(base, experts, out))
    wait_for(marker, proc)
    staging = out.parent / f".m.hfmerge-tmp-{proc.pid}"
    assert staging.is_dir() and any(staging.iterdir())  # killed while writing into its staging folder
    proc.kill()
    proc.wait()
    assert not out.exists()
    merge(soup(base, experts), out, progress=False)  # the next run into the same place
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]  # the killed run's folder and lock are gone
    for name in WEIGHT_FILES:
        assert sha256(out / name) == sha256(ref / name), name


def test_sigkill_inside_the_overwrite_swap_restores_the_old_output(reference, tmp_path):
    base, experts, ref = reference
    out = tmp_path / "outs" / "m"
    merge(soup(base, experts[:2]), out, progress=False)
    before = sha256(out / "model.safetensors")
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_SWAP_CLI, *merge_args(base, experts, out, "--overwrite")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # killed between the two renames: only the moved-aside old output remains
    assert any(p.name.startswith(".m.hfmerge-old-") for p in out.parent.iterdir())
    with pytest.raises(HfMergeError, match="already exists"):  # the next run puts the old output back first
        merge(soup(base, experts), out, progress=False)
    assert sha256(out / "model.safetensors") == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]
    merge(soup(base, experts), out, overwrite=True, progress=False)
    assert sha256(out / "model.safetensors") == sha256(ref / "model.safetensors")


def test_sigterm_unwinds_like_ctrl_c(reference, tmp_path):
    base, experts, _ = reference
    out = tmp_path / "outs" / "m"
    proc, marker, _ = start_pausing(tmp_path, merge_args(base, experts, out))
    wait_for(marker, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.strip() == "interrupted: nothing was written", stderr
    assert list(out.parent.iterdir()) == []


def test_a_merge_into_a_folder_another_merge_is_writing_refuses(reference, tmp_path):
    base, experts, _ = reference
    out = tmp_path / "outs" / "m"
    with OutputFolder(out) as held:
        held.stage(1)
        with pytest.raises(HfMergeError) as err:
            merge(soup(base, experts), out, progress=False)
        assert one_line(err) == (f"another hfmerge run (pid {os.getpid()}) is writing {out}: wait for it to finish "
                                 "or choose another -o")
    assert list(out.parent.iterdir()) == []  # released and cleaned


def test_two_merges_at_once_give_exactly_one_complete_output(reference, tmp_path):
    base, experts, ref = reference
    out = tmp_path / "outs" / "m"
    first, marker, go = start_pausing(tmp_path, merge_args(base, experts, out, "--overwrite"), tag="first")
    wait_for(marker, first)  # the first merge is writing (and paused there)
    second = subprocess.run([sys.executable, "-m", "hfmerge.cli", *merge_args(base, experts, out, "--overwrite")],
                            capture_output=True, text=True, env=ENV, timeout=300)
    go.write_text("go")
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 1
    assert second.stderr.strip() == (f"error: another hfmerge run (pid {first.pid}) is writing {out}: wait for it "
                                     "to finish or choose another -o"), second.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]
    for name in WEIGHT_FILES:
        assert sha256(out / name) == sha256(ref / name), name


# ---- a full disk ---------------------------------------------------------------------------------------------------

class _FullDisk:
    """Files opened for writing by the shard writer fail with ENOSPC once ``budget`` bytes are written."""

    def __init__(self, budget: int):
        self.left = budget
        self.real_open = builtins.open

    def open(self, path, mode="r", *args, **kwargs):
        f = self.real_open(path, mode, *args, **kwargs)
        return _Limited(f, self, str(path)) if any(c in mode for c in "wax") else f


class _Limited:
    def __init__(self, f, disk: _FullDisk, path: str):
        self.f, self.disk, self.path = f, disk, path

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if n > self.disk.left:
            self.f.write(memoryview(data).cast("B")[:self.disk.left])
            self.disk.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        self.disk.left -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _no_space_on(msg: str, parent: Path) -> None:
    assert msg.startswith(f"no space left on {parent}: free ") and msg.endswith(" free)"), msg
    assert "or choose another -o" in msg


@pytest.mark.parametrize("budget", [0, 7, 30_000, "all but one"])
def test_disk_full_while_writing_shards(reference, tmp_path, monkeypatch, budget):
    base, experts, ref = reference
    total = (ref / "model.safetensors").stat().st_size
    disk = _FullDisk(total - 1 if budget == "all but one" else budget)
    monkeypatch.setattr(writer, "open", disk.open, raising=False)
    out = tmp_path / "outs" / "m"
    with pytest.raises(HfMergeError) as err:
        merge(soup(base, experts), out, progress=False, shard_size="40KB")
    _no_space_on(one_line(err), out.parent)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("where", ["hfmerge.yaml", "tokenizer.json", "README.md"])
def test_disk_full_while_writing_metadata_keeps_the_old_output(reference, tmp_path, monkeypatch, where):
    base, experts, _ = reference
    out = tmp_path / "outs" / "m"
    merge(soup(base, experts[:2]), out, progress=False)
    before = {p.name: sha256(p) for p in out.iterdir()}
    real_write_text, real_copyfile = Path.write_text, shutil.copyfile

    def write_text(self, *a, **k):
        if self.name == where:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, *a, **k)

    def copyfile(src, dst, *a, **k):
        if Path(dst).name == where:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_copyfile(src, dst, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    with pytest.raises(HfMergeError) as err:
        merge(soup(base, experts), out, overwrite=True, progress=False)
    _no_space_on(one_line(err), out.parent)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]
    assert {p.name: sha256(p) for p in out.iterdir()} == before


def test_not_enough_free_space_is_refused_before_writing(reference, tmp_path, monkeypatch):
    base, experts, ref = reference
    free = 10_000
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: SimpleNamespace(free=free))
    out = tmp_path / "outs" / "m"
    with pytest.raises(HfMergeError) as err:
        merge(soup(base, experts), out, progress=False)
    msg = one_line(err)
    _no_space_on(msg, out.parent)
    needed = sum(t.nbytes for t in open_checkpoint(str(base)).tensors.values())
    assert f"free {writer.human_bytes(needed - free)} " in msg and f"writes {writer.human_bytes(needed)}" in msg
    assert list(out.parent.iterdir()) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 48 KiB tmpfs (smaller than the tiny merge's output), or a skip where mounting is not allowed."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'mount failed'})")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("check_first", [True, False])
def test_real_full_disk(reference, tiny_tmpfs, monkeypatch, check_first):
    base, experts, _ = reference
    if not check_first:  # pretend there is room, so the writes themselves hit ENOSPC
        monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: SimpleNamespace(free=10**12))
    out = tiny_tmpfs / "m"
    with pytest.raises(HfMergeError) as err:
        merge(soup(base, experts), out, progress=False)
    assert one_line(err).startswith(f"no space left on {tiny_tmpfs}: free ")
    assert os.listdir(tiny_tmpfs) == []


# ---- a push killed mid-upload ------------------------------------------------------------------------------------

PUSH = [sys.executable, "-m", "hfmerge.cli", "push"]


def _kill_on_lfs_upload(local_hub, monkeypatch, proc_box: dict):
    def hook(handler):
        os.kill(proc_box["proc"].pid, signal.SIGKILL)
        proc_box["killed"] = True
        raise ConnectionResetError("client gone")
    monkeypatch.setattr(local_hub.hub, "on_lfs_put", hook)


def _push_env(local_hub) -> dict:
    return {**ENV, "HF_ENDPOINT": local_hub.url, "HF_TOKEN": local_hub.token}


def test_push_killed_mid_upload_leaves_the_repo_as_it_was(local_hub, reference, tmp_path, monkeypatch):
    base, experts, ref = reference
    out = copy_model(ref, tmp_path / "m")
    repo = f"{USER}/rel-killed-push"
    api = HfApi()
    subprocess.run([*PUSH, str(out), "--repo", repo], check=True, env=_push_env(local_hub), capture_output=True)
    before = api.model_info(repo).sha
    commits = len(api.list_repo_commits(repo))
    merge(soup(base, experts[:2]), out, overwrite=True, progress=False)  # new weights: a new LFS upload
    (out / "extra.bin").write_bytes(os.urandom(64 << 10))  # and bytes no earlier test can have uploaded
    box: dict = {}
    _kill_on_lfs_upload(local_hub, monkeypatch, box)
    box["proc"] = subprocess.Popen([*PUSH, str(out), "--repo", repo], env=_push_env(local_hub),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    box["proc"].wait(timeout=300)
    assert box.get("killed") and box["proc"].returncode == -signal.SIGKILL
    assert api.model_info(repo).sha == before and len(api.list_repo_commits(repo)) == commits
    monkeypatch.setattr(local_hub.hub, "on_lfs_put", None)
    subprocess.run([*PUSH, str(out), "--repo", repo], check=True, env=_push_env(local_hub), capture_output=True)
    assert len(api.list_repo_commits(repo)) == commits + 1  # the retried push is one commit
    from huggingface_hub import hf_hub_download

    assert sha256(hf_hub_download(repo, "model.safetensors")) == sha256(out / "model.safetensors")


def test_first_push_killed_mid_upload_commits_nothing(local_hub, reference, tmp_path, monkeypatch):
    base, experts, _ = reference
    out = tmp_path / "m"
    merge(soup(base, experts[1:]), out, progress=False)
    (out / "extra.bin").write_bytes(os.urandom(64 << 10))  # bytes the Hub has never seen: they must be uploaded
    repo = f"{USER}/rel-killed-first-push"
    box: dict = {}
    _kill_on_lfs_upload(local_hub, monkeypatch, box)
    box["proc"] = subprocess.Popen([*PUSH, str(out), "--repo", repo], env=_push_env(local_hub),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    box["proc"].wait(timeout=300)
    assert box.get("killed")
    api = HfApi()
    if api.repo_exists(repo):  # created before the upload: still only the Hub's initial commit, no files
        assert len(api.list_repo_commits(repo)) == 1
        assert set(api.list_repo_files(repo)) <= {".gitattributes"}


# ---- a faulty Hub ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(local_hub, reference):
    """The reference family on the loopback Hub."""
    base, experts, ref = reference
    api = HfApi()
    ids = publish(api, [base, *experts], f"{USER}/rel")
    return ids[0], ids[1:], ref


@pytest.fixture
def through_proxy(local_hub, monkeypatch):
    """Point huggingface_hub at a FaultProxy in front of the loopback Hub; yields a setter for its rule."""
    proxy = FaultProxy(local_hub.url)
    monkeypatch.setattr(constants, "ENDPOINT", proxy.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        proxy.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_ENDPOINT", proxy.url)
    fast = SimpleNamespace(**{k: getattr(time, k) for k in ("monotonic", "time", "perf_counter")}, sleep=lambda s: None)
    monkeypatch.setattr(remote, "time", fast)  # no backoff sleeps in the reader (the proxy's delays stay real)
    remote.configure(read_ahead=1 << 20, max_block=16 << 10, head_bytes=4 << 10, connections=4)  # many small ranges
    yield proxy
    remote.configure()
    proxy.stop()


SURVIVABLE = {
    "503 on every 2nd request": every(2, Fault("status", 503)),
    "502 on every 3rd request": every(3, Fault("status", 502), start=1),
    "connection cut mid-body (every 3rd)": every(3, Fault("cut", fraction=0.5)),
    "connection cut before any byte (every 2nd)": every(2, Fault("cut", fraction=0.0)),
    "short body (every 3rd)": every(3, Fault("short", fraction=0.3)),
    "slow answers": every(2, Fault("delay", seconds=0.05)),
    "slow bodies": every(3, Fault("trickle", seconds=0.01)),
    "a random mix (seed 1)": randomly(0.3, [Fault("status"), Fault("cut", fraction=0.7), Fault("short", fraction=0.5),
                                            Fault("delay", seconds=0.02)], seed=1),
    "a random mix (seed 2)": randomly(0.4, [Fault("status", 500), Fault("cut", fraction=0.2),
                                            Fault("short", fraction=0.9)], seed=2),
}


@pytest.mark.parametrize("name", list(SURVIVABLE))
def test_lazy_merge_through_faults_gives_the_local_bytes(published, through_proxy, tmp_path, name):
    base_id, expert_ids, ref = published
    through_proxy.rule, through_proxy.spare_retries = SURVIVABLE[name], True
    out = tmp_path / "outs" / "m"
    merge(MergeConfig("soup", base_id, [ModelRef(e) for e in expert_ids]), out, progress=False)
    assert sum(v for k, v in through_proxy.counts.items() if k != "requests") > 0  # faults were injected
    for f in WEIGHT_FILES:
        assert sha256(out / f) == sha256(ref / f), f
    assert sorted(p.name for p in out.parent.iterdir()) == ["m"]


@pytest.mark.parametrize("after", [0, 12])
@pytest.mark.parametrize("fault", [Fault("status", 503), Fault("cut", fraction=0.0), Fault("short", fraction=0.0)])
def test_a_hub_that_keeps_failing_gives_one_line_and_nothing(published, through_proxy, tmp_path, fault, after):
    base_id, expert_ids, _ = published
    through_proxy.rule = lambda method, path, i: fault if i >= after else None  # from the start, or mid-merge
    out = tmp_path / "outs" / "m"
    with pytest.raises(HfMergeError) as err:
        merge(MergeConfig("soup", base_id, [ModelRef(e) for e in expert_ids]), out, progress=False)
    msg = one_line(err)
    assert "rel-" in msg, msg  # names the repo
    assert list(out.parent.iterdir()) == []


def test_remote_headers_are_checked_as_strictly_as_local_ones(local_hub, reference, tmp_path):
    base, experts, _ = reference
    bad = _corrupt_expert(experts[0], tmp_path / "bad", "overlap")
    repo = f"{USER}/rel-corrupt"
    HfApi().create_repo(repo, exist_ok=True)
    HfApi().upload_folder(folder_path=str(bad), repo_id=repo)
    with pytest.raises(HfMergeError) as local_err:
        open_checkpoint(str(bad))
    with pytest.raises(HfMergeError) as remote_err:
        open_checkpoint(repo)
    local_rule = one_line(local_err).split(": ", 1)[1]
    remote_msg = one_line(remote_err)
    assert remote_msg.startswith(f"{repo}@") and remote_msg.endswith(local_rule)
    res = subprocess.run([sys.executable, "-m", "hfmerge.cli", *merge_args(base, [repo], tmp_path / "outs" / "m")],
                         capture_output=True, text=True, env=_push_env(local_hub), timeout=300)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "overlaps tensor" in res.stderr, res.stderr
    assert not (tmp_path / "outs").exists() or list((tmp_path / "outs").iterdir()) == []


def test_result_files_are_written_whole(tmp_path, monkeypatch):
    """results.json, tune.json, study.json and report outputs go through one rename: a failure mid-write leaves the
    previous content and no temporary file."""
    import os

    from hfmerge.files import write_atomic

    path = tmp_path / "results.json"
    write_atomic(path, '{"old": 1}\n')
    assert path.read_text() == '{"old": 1}\n'

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomic(path, '{"new": 2}\n')
    assert path.read_text() == '{"old": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["results.json"]
