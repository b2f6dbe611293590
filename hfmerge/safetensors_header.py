"""The safetensors header rules, as pure functions over bytes (no file access, no torch).

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of UTF-8 JSON, then the data
area. The JSON is an object: an optional ``__metadata__`` map of strings to strings, and for every tensor
``{"dtype": D, "shape": [d0, ...], "data_offsets": [begin, end]}`` with offsets relative to the data area.
The tensors, sorted by offset, must tile the data area exactly (the first starts at 0, each starts where the
previous ends, the last ends at the end of the file), and each is exactly ``prod(shape) × bits(D) / 8`` bytes
long. These are the rules huggingface/safetensors enforces (``Metadata::validate`` and
``SafeTensors::read_metadata``), plus one more: a tensor name may appear only once.

The same rules apply wherever the bytes come from (a local file or HTTP ranges of a Hub file), so a corrupt
or hostile header is refused before any tensor is read, in one line naming the file, the tensor and the rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from math import prod

from hfmerge.errors import HfMergeError

MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE
MAX_INT = 2**64 - 1  # shapes and offsets are u64/usize in the format
# every dtype the format defines (safetensors 0.8), with its width in bits
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
FIX = "corrupt or not a safetensors file: download or save it again"


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a validated header; ``begin``/``end`` are offsets in the data area."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _refuse(where: str, what: str) -> HfMergeError:
    return HfMergeError(f"{where}: {what} ({FIX})")


def header_length(prefix: bytes, file_size: int, where: str) -> int:
    """The JSON length ``n`` from the file's first 8 bytes, checked against the file size and the 100 MB limit."""
    if file_size < 8 or len(prefix) < 8:
        raise _refuse(where, f"file is {file_size} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(prefix[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise _refuse(where, f"header length {n} exceeds the safetensors limit of {MAX_HEADER_BYTES} bytes")
    if 8 + n > file_size:
        raise _refuse(where, f"header length {n} runs past the end of the {file_size}-byte file")
    return n


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def decode_header(raw: bytes, where: str) -> dict:
    """The header JSON: strict UTF-8, standard JSON (no NaN/Infinity), no duplicate keys, an object."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise _refuse(where, f"header is not UTF-8 (byte {e.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise _refuse(where, f"header is not valid JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(header, dict):
        raise _refuse(where, f"header is a JSON {_json_type(header)}, not an object")
    return header


def _json_type(x: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(x), type(x).__name__)


def _is_uint(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_INT


def validate_header(header: object, data_size: int, where: str) -> dict[str, HeaderEntry]:
    """Every rule of the format on a decoded header, for a data area of ``data_size`` bytes
    (file size − 8 − header length). Returns the tensors in file order; raises HfMergeError otherwise."""
    if not isinstance(header, dict):
        raise _refuse(where, f"header is a JSON {_json_type(header)}, not an object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise _refuse(where, "__metadata__ is not a map of strings to strings")
    entries: list[HeaderEntry] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensor = f"tensor {name!r}"
        if not isinstance(info, dict):
            raise _refuse(where, f"{tensor} is described by a JSON {_json_type(info)}, not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            raise _refuse(where, f"{tensor} has no {missing[0]}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise _refuse(where, f"{tensor} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise _refuse(where, f"{tensor} has shape {_short(shape)}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
            raise _refuse(where, f"{tensor} has data_offsets {_short(offsets)}, not two non-negative integers")
        begin, end = offsets
        if begin > end:
            raise _refuse(where, f"{tensor} has data_offsets [{begin}, {end}] that end before they begin")
        if end > data_size:
            raise _refuse(where, f"{tensor} has data_offsets [{begin}, {end}] past the end of the file (truncated? "
                                 f"its data area holds {data_size} bytes)")
        bits = prod(shape) * DTYPE_BITS[dtype]
        if bits % 8:
            raise _refuse(where, f"{tensor}: shape {shape} of {dtype} is not a whole number of bytes")
        if end - begin != bits // 8:
            raise _refuse(where, f"{tensor} has data_offsets [{begin}, {end}] spanning {end - begin} bytes but "
                                 f"shape {shape} of {dtype} needs {bits // 8}")
        entries.append(HeaderEntry(name, dtype, tuple(shape), begin, end))
    entries.sort(key=lambda e: (e.begin, e.end))
    pos, prev = 0, None
    for e in entries:
        if e.begin < pos:
            raise _refuse(where, f"tensor {e.name!r} at [{e.begin}, {e.end}] overlaps tensor {prev.name!r} at "
                                 f"[{prev.begin}, {prev.end}]")
        if e.begin > pos:
            after = f"after tensor {prev.name!r}" if prev else "at the start of the data area"
            raise _refuse(where, f"{e.begin - pos} bytes {after} belong to no tensor (tensor {e.name!r} "
                                 f"starts at {e.begin}): tensors must be contiguous")
        pos, prev = e.end, e
    if pos != data_size:
        last = f"tensor {prev.name!r} ends at {pos}" if prev else "there are no tensors"
        raise _refuse(where, f"the data area is {data_size} bytes but {last}: {data_size - pos} bytes belong to no "
                             "tensor")
    return {e.name: e for e in entries}


def _short(x: object) -> str:
    text = json.dumps(x) if not isinstance(x, str) else repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def parse(read: Callable[[int, int], bytes], file_size: int, where: str) -> tuple[int, dict[str, HeaderEntry]]:
    """Read and validate a header through ``read(offset, length)`` (two small reads: the length, the JSON).
    Returns the absolute offset of the data area and the tensors in file order."""
    n = header_length(read(0, 8) if file_size >= 8 else b"", file_size, where)
    header = decode_header(read(8, n), where)
    return 8 + n, validate_header(header, file_size - 8 - n, where)


def parse_bytes(blob: bytes, where: str) -> tuple[int, dict[str, HeaderEntry]]:
    """:func:`parse` over a whole file's bytes."""
    return parse(lambda off, n: blob[off:off + n], len(blob), where)
