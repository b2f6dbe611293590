"""Fuzzing the safetensors header parser: seeded random corruptions of a valid file.

Oracle: the safetensors library itself. Whatever hfmerge accepts, the library accepts with the same tensors
(names, dtypes, shapes, bytes); whatever the library refuses, hfmerge refuses in one line naming the file.
hfmerge is stricter in one documented way (a tensor name given twice). Never a traceback; and a merge with a
corrupt expert never leaves an output.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from hfmerge.config import MergeConfig, ModelRef
from hfmerge.engine import merge
from hfmerge.errors import HfMergeError
from hfmerge.safetensors_header import DTYPE_BITS
from hfmerge.sources import DTYPE_NAMES, LocalReader, parse_header

CASES = 400
JUNK = [None, True, -1, 0, 1, 2**64, 2**64 - 1, 1.5, "", "F32", "x", [], [0], [1, 2, 3], {}, {"a": 1}, [-1, 4],
        [2**63, 2**63], "BF16", "F8_E4M3", "F4", "I8", "U16"]


def seed_file() -> bytes:
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(6, 5, generator=g).to(torch.bfloat16), "b": torch.randn(5, generator=g),
               "idx": torch.arange(3), "mask": torch.tensor([True, False]), "h": torch.zeros(2, 3, dtype=torch.float16)}
    return save(tensors, metadata={"format": "pt"})


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header: dict | list | str, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def corrupt(blob: bytes, rng: random.Random) -> bytes:
    """One random corruption: raw bytes (header or data area), the length, or one field of the JSON."""
    header, data = split(blob)
    n = len(blob) - len(data) - 8
    names = [k for k in header if k != "__metadata__"]
    kind = rng.randrange(12)
    if kind == 0:  # flip bytes inside the header
        b = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(8 + n)] = rng.randrange(256)
        return bytes(b)
    if kind == 1:  # truncate anywhere
        return blob[:rng.randrange(len(blob))]
    if kind == 2:  # a wrong length prefix
        m = rng.choice([0, 1, n - 1, n + 1, n + 8, len(blob), 2**31, 100_000_001, 2**64 - 1, rng.randrange(2 * n)])
        return struct.pack("<Q", m) + blob[8:]
    if kind == 3:  # append or drop data bytes
        return blob + bytes(rng.randint(1, 16)) if rng.random() < 0.5 else blob[:-rng.randint(1, 16)]
    if kind == 4:  # a field replaced by junk
        t = rng.choice(names)
        header[t][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(JUNK)
        return join(header, data)
    if kind == 5:  # a field removed
        del header[rng.choice(names)][rng.choice(["dtype", "shape", "data_offsets"])]
        return join(header, data)
    if kind == 6:  # offsets nudged
        t = rng.choice(names)
        i, d = rng.randrange(2), rng.choice([-3, -2, -1, 1, 2, 4, 8])
        header[t]["data_offsets"][i] = max(0, header[t]["data_offsets"][i] + d)
        return join(header, data)
    if kind == 7:  # a dimension changed (size no longer matches, or matches by chance)
        t = rng.choice(names)
        if header[t]["shape"]:
            header[t]["shape"][rng.randrange(len(header[t]["shape"]))] = rng.choice([0, 1, 2, 3, 5, 6, 7, 30])
        else:
            header[t]["shape"] = [rng.randint(0, 4)]
        return join(header, data)
    if kind == 8:  # another dtype (same or different width)
        header[rng.choice(names)]["dtype"] = rng.choice([*DTYPE_BITS, "F128", "bf16", "Q4"])
        return join(header, data)
    if kind == 9:  # the metadata or the whole header replaced
        if rng.random() < 0.5:
            header["__metadata__"] = rng.choice([{"format": 1}, ["pt"], "pt", None, {"a": "b"}, {"x": None}])
            return join(header, data)
        return join(rng.choice([[], "x", 1, None, [header]]), data)
    if kind == 10:  # two tensors swap offsets
        a, b = rng.sample(names, 2)
        header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
        return join(header, data)
    # a duplicate key, or a tensor moved over another
    if rng.random() < 0.5:
        text = json.dumps(header)
        t = rng.choice(names)
        dup = text[:-1] + f', "{t}": ' + json.dumps(header[rng.choice(names)]) + "}"
        return struct.pack("<Q", len(dup)) + dup.encode() + data
    a, b = rng.sample(names, 2)
    header[a]["data_offsets"] = list(header[b]["data_offsets"])
    return join(header, data)


def library_view(path: Path) -> dict | None:
    """What the safetensors library reads: {name: (dtype name, shape, bytes)}, or None when it refuses."""
    try:
        with safe_open(str(path), "pt") as f:
            out = {}
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = (DTYPE_NAMES.get(t.dtype), list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()
                          if t.numel() else b"")
            return out
    except Exception:
        return None


def test_random_corruptions_never_crash_and_agree_with_the_library(tmp_path):
    blob = seed_file()
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "model.safetensors"
    outcomes = {"refused": 0, "accepted": 0, "stricter": 0}
    for case in range(CASES):
        rng = random.Random(case)
        bad = corrupt(blob, rng)
        path.write_bytes(bad)
        lib = library_view(path)
        reader = LocalReader(folder)
        try:
            infos = parse_header(reader, "model.safetensors")
        except HfMergeError as e:
            msg = str(e)
            assert "\n" not in msg and f"{folder}/model.safetensors" in msg, (case, msg)
            if lib is not None:  # only where hfmerge is documented to be stricter
                assert "appears twice" in msg or "which hfmerge does not read" in msg, (case, msg)
                outcomes["stricter"] += 1
            outcomes["refused"] += 1
            continue
        finally:
            reader.close()
        assert lib is not None, (case, "hfmerge accepted a file the safetensors library refuses")
        assert set(infos) == set(lib), case
        reader = LocalReader(folder)
        for name, info in infos.items():
            dtype, shape, data = lib[name]
            assert (info.dtype, list(info.shape)) == (dtype, shape), (case, name)
            assert bytes(reader.read_range("model.safetensors", info.start, info.nbytes)) == data, (case, name)
        reader.close()
        outcomes["accepted"] += 1
    # the corruptions are mostly real: most files are refused, a few stay valid (e.g. a shape [6, 5] -> [5, 6])
    assert outcomes["refused"] > 0.7 * CASES and outcomes["accepted"] > 0, outcomes


@pytest.mark.parametrize("case", range(12))
def test_a_merge_with_a_randomly_corrupted_expert_leaves_no_output(family, tmp_path, case):
    base, experts = family("llama")
    rng = random.Random(1000 + case)
    blob = (experts[0] / "model.safetensors").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in experts[0].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    while True:  # a corruption the safetensors library refuses
        (bad / "model.safetensors").write_bytes(corrupt(blob, rng))
        if library_view(bad / "model.safetensors") is None:
            break
    out = tmp_path / "outs" / "m"
    with pytest.raises(HfMergeError) as err:
        merge(MergeConfig("task_arithmetic", str(base), [ModelRef(str(bad)), ModelRef(str(experts[1]))]), out,
              progress=False)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert not out.exists() and list(out.parent.iterdir()) == []
