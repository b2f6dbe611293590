"""A merge job around the streaming core (hfmerge.engine): open the sources and the experts' statistics
(computing them when missing), run the merge into a folder (written aside, published atomically) or into
memory, and write the config, the resolved recipe, merge_report.json and the model card."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from hfmerge import __version__, catalog
from hfmerge.card import base_license, write_card
from hfmerge.config import MergeConfig
from hfmerge.engine import DEFAULT_CHUNK_NUMEL, Merger, peak_rss_bytes
from hfmerge.errors import HfMergeError
from hfmerge.lora import LoraCheckpoint, is_adapter
from hfmerge.methods.registry import get_method
from hfmerge.remote import transfer_report
from hfmerge.sources import Checkpoint, open_checkpoint, open_reader
from hfmerge.stats.store import compute_stats, open_stats
from hfmerge.writer import MemoryWriter, OutputFolder, ShardWriter, parse_size

COPIED_FILES = (
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)


def _write_metadata(folder: Path, merger: Merger) -> None:
    base = merger.base
    cfg = dict(base.config)
    cfg["dtype"] = merger.out_dtype_name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = merger.out_dtype_name
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in COPIED_FILES:
        if f in base.files:
            base.reader.copy_to(f, folder / f)


def resolved_config(config: MergeConfig, merger: Merger) -> dict:
    d = config.to_dict()
    d["parameters"] = {k: v for k, v in merger.params.items() if v is not None}
    d["dtype"] = merger.out_dtype_name
    d["revisions"] = {c.ref.split("@")[0]: c.revision for c in (merger.base, *merger.experts) if c.revision}
    return d


@contextmanager
def open_merger(config: MergeConfig, *, device: str = "cpu", chunk_numel: int = DEFAULT_CHUNK_NUMEL,
                progress: bool = True, download: bool = False) -> Iterator[tuple[Merger, list[tuple[Path, str]]]]:
    """Open (lazily) every source and statistics of ``config``; yields the Merger and the statistics folders."""
    if device != "cpu" and not _device_available(device):
        raise HfMergeError(f"device {device!r} is not available here (use cpu)")
    opened: list[Checkpoint] = []
    try:
        opened.append(open_checkpoint(config.base_model, download))
        for m in config.models:
            reader = open_reader(m.source, download)
            try:
                opened.append(LoraCheckpoint(m.source, reader, opened[0]) if is_adapter(reader)
                              else Checkpoint(m.source, reader))
            except BaseException:
                reader.close()
                raise
        stats = resolve_stats(config, progress)
        stat_sources = [open_stats(f, kind) for f, kind in stats]
        opened.extend(stat_sources)
        yield Merger(config, opened[0], opened[1:len(config.models) + 1], stats=stat_sources or None, device=device,
                     chunk_numel=chunk_numel, progress=progress), stats
    finally:
        for c in opened:
            c.close()


def merge_state_dict(config: MergeConfig, *, device: str = "cpu", chunk_numel: int = DEFAULT_CHUNK_NUMEL,
                     progress: bool = False) -> dict[str, torch.Tensor]:
    """The merged tensors in memory (for tuning and in-memory evaluation); same numbers as :func:`merge`."""
    with open_merger(config, device=device, chunk_numel=chunk_numel, progress=progress) as (merger, _):
        writer = MemoryWriter(merger.out_tensors())
        merger.run(writer)
        return writer.tensors


def merge(config: MergeConfig, out: str | Path, *, shard_size: int | str = "5GB", overwrite: bool = False,
          device: str = "cpu", chunk_numel: int = DEFAULT_CHUNK_NUMEL, progress: bool = True,
          download: bool = False) -> dict:
    """Merge ``config`` into the folder ``out``; returns the merge report (also written as merge_report.json).

    The output appears only when complete (written to a sibling temp folder, then renamed)."""
    start = time.perf_counter()
    shard_bytes = parse_size(shard_size)
    with OutputFolder(out, overwrite=overwrite) as output, open_merger(
            config, device=device, chunk_numel=chunk_numel, progress=progress, download=download) as (merger, stats):
        sources = [merger.base, *merger.experts]
        tmp = output.stage(sum(t.nbytes for t in merger.out_tensors()))
        run_stats = merger.run(ShardWriter(tmp, merger.out_tensors(), shard_bytes))
        _write_metadata(tmp, merger)
        resolved = resolved_config(config, merger)
        (tmp / "hfmerge.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
        report = {
            "hfmerge_version": __version__,
            "torch_version": torch.__version__,
            "method": merger.method.name,
            "parameters": resolved["parameters"],
            "dtype": merger.out_dtype_name,
            "device": device,
            "sources": [
                {"role": "base" if c is merger.base else "expert", "ref": c.ref, "revision": c.revision,
                 "weight_bytes": c.weight_bytes, "bytes_read": c.bytes_read,
                 "bytes_fetched": getattr(c.reader, "bytes_fetched", None),
                 **({"transfer": c.reader.transfer_stats()} if hasattr(c.reader, "transfer_stats") else {})}
                for c in sources
            ],
            "statistics": [{"expert": m.source, "folder": str(f), **_sidecar(f)} for m, (f, _) in
                           zip(config.models, stats, strict=True)] if stats else None,
            "bytes_read": sum(c.bytes_read for c in sources),
            "transfer": transfer_report(c.reader for c in sources),
            **run_stats,
            "wall_seconds": round(time.perf_counter() - start, 3),
            "peak_rss_bytes": peak_rss_bytes(),
            "license": base_license(merger.base.reader.read_file("README.md")),
        }
        (tmp / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
        write_card(tmp, resolved, report)
        output.publish()
        return report


def resolve_stats(config: MergeConfig, progress: bool = True) -> list[tuple[Path, str]]:
    """(folder, kind) of every expert's statistics when the method needs them: given (``stats:``), cached, or
    computed now from the expert's ``data:``."""
    method = get_method(config.method)
    spec = method.stats(method.resolve(config.parameters))
    if spec is None:
        return []
    out = []
    for m in config.models:
        if m.stats:
            out.append((Path(m.stats), spec.kind))
            continue
        data = m.data or (catalog.validation_data(catalog.domain_of(m.source)) if catalog.domain_of(m.source)
                          else None)
        if not data:
            raise HfMergeError(f"method {method.name} needs data for expert {m.source}: give it `data:` (its domain's "
                               f"dataset) or `stats:` (a folder made by `hfmerge stats {spec.kind}`)")
        folder = compute_stats(spec.kind, m.source, data, base_ref=config.base_model, skip=config.skip,
                               seed=config.seed, progress=progress, **spec.settings)
        out.append((folder, spec.kind))
    return out


def _sidecar(folder: Path) -> dict:
    meta = json.loads((Path(folder) / "stats.json").read_text())
    return {k: meta.get(k) for k in ("kind", "data_ref", "examples", "seconds", "key")}


def _device_available(device: str) -> bool:
    kind = device.split(":")[0]
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return False


