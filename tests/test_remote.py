"""Lazy merges straight from a Hub that behaves like huggingface.co at scale (the loopback Hub's realism):
round trips, a bandwidth cap, the storage-bridge redirect, a resolvers rate limit, a proxy ignoring Range,
503s, cut connections and short bodies. Every merge must equal the same merge from local folders, byte for
byte, with bounded buffering and few requests."""

from __future__ import annotations

import hashlib
import math
import os

import pytest
from huggingface_hub import HfApi

from hfmerge import remote, sources
from hfmerge.config import MergeConfig, ModelRef
from hfmerge.job import merge
from hfmerge.localhub import Realism
from tests.tiny import make_family, publish

USER = "hfmerge-user"
BLOCK = 16 << 10  # scaled-down ranges: the tiny checkpoints (≈ 90 KB) span several blocks
HEAD = 4 << 10
BUDGET = 192 << 10


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def family_on_hub(local_hub, tmp_path_factory):
    base, experts = make_family(tmp_path_factory.mktemp("remotefam"), n_experts=2, seed=3)
    api = HfApi()
    ids = publish(api, [base, *experts], f"{USER}/remote")
    return (base, experts), (ids[0], ids[1:])


@pytest.fixture
def realism(local_hub):
    """Set the Hub's realism for one test (small blocks and budget on the client); restored afterwards."""
    remote.configure(read_ahead=BUDGET, connections=4, max_block=BLOCK, head_bytes=HEAD)

    def set_(**kw) -> None:
        local_hub.hub.realism = Realism(**kw)
        local_hub.hub.reset_counters()

    yield set_
    local_hub.hub.realism = Realism()
    remote.configure()


def local_and_remote(family_on_hub, tmp_path, method: str, params: dict):
    (base, experts), (base_id, expert_ids) = family_on_hub
    merge(MergeConfig(method, str(base), [ModelRef(str(e)) for e in experts], params), tmp_path / "local",
          progress=False)
    report = merge(MergeConfig(method, base_id, [ModelRef(e) for e in expert_ids], params), tmp_path / "remote",
                   progress=False)
    assert sha256(tmp_path / "local" / "model.safetensors") == sha256(tmp_path / "remote" / "model.safetensors")
    return report


def planned_bytes(folder, names: set[str] | None) -> int:
    """Bytes of the tensors a merge reads from one checkpoint (all, or ``names``) plus the gaps between them
    small enough to be read through, as the reader plans them."""
    reader = sources.LocalReader(folder)
    infos = sorted(sources.parse_header(reader, "model.safetensors").values(), key=lambda t: t.start)
    reader.close()
    gap = min(remote.GAP_BYTES, BLOCK // 32)
    total, last_end = 0, None
    for t in infos:
        if names is not None and t.name not in names:
            continue
        total += t.nbytes
        if last_end is not None and 0 < t.start - last_end <= gap:
            total += t.start - last_end
        last_end = t.start + t.nbytes
    return total


def merged_names(folder) -> set[str]:
    reader = sources.LocalReader(folder)
    names = {n for n in sources.parse_header(reader, "model.safetensors")
             if "embed_tokens" not in n and "lm_head" not in n}
    reader.close()
    return names


@pytest.mark.parametrize("method,params", [("task_arithmetic", {"scaling": 0.7}),
                                           ("ties", {"density": 0.3, "topk_scope": "global"})])
def test_bridge_latency_bandwidth_equal_local_bytes_and_requests(family_on_hub, tmp_path, realism, local_hub,
                                                                method, params):
    realism(rtt=0.002, bandwidth=20e6, bridge=True)
    report = local_and_remote(family_on_hub, tmp_path, method, params)
    (base, experts), _ = family_on_hub
    tr, c = report["transfer"], local_hub.hub.counters
    names = merged_names(base)
    # every planned byte fetched exactly once: header head + config.json + the merged tensors (never the experts'
    # embeddings / lm_head), the base whole; global top-k reads its passes from the local spill
    for src, folder in zip(report["sources"][1:], experts, strict=True):
        expected = HEAD + (folder / "config.json").stat().st_size + planned_bytes(folder, names)
        assert src["bytes_fetched"] == expected, src
    assert tr["refetched_bytes"] == 0 and tr["retries"] == 0 and tr["rate_limit_waits"] == 0
    if method == "ties":
        assert tr["reads_again"] == "from the local spill"
        assert tr["spilled_bytes"] == sum(planned_bytes(f, names) for f in (base, *experts))
    else:
        assert tr["reads_again"].startswith("none") and tr["spilled_bytes"] == 0
    # one /resolve (then one bridge call) per block, header or small file; never one per chunk
    data = sum(math.ceil(planned_bytes(f, names if f != base else None) / BLOCK) for f in (base, *experts))
    small = tr["requests"] - data - 3  # the 3 header heads
    assert c["resolve"] >= tr["requests"] and c["bridge"] >= data + 3
    assert data <= tr["requests"] <= data + 3 + 20 and small <= 20, (tr, dict(c))
    # ≤ 64 /resolve per GiB at 32 MiB ranges = ≤ 2 per BLOCK-sized share of the bytes fetched (small files included)
    assert c["resolve"] * BLOCK <= 2 * tr["bytes_fetched"], (dict(c), tr)
    assert tr["peak_buffered_bytes"] <= BUDGET and tr["block_bytes"] == BLOCK
    assert c["max_active"] >= 2  # ranges were in flight side by side


def test_rate_limited_merge_waits_and_succeeds(family_on_hub, tmp_path, realism, local_hub):
    realism(bridge=True, resolve_limit=12, resolve_window=1.0)
    report = local_and_remote(family_on_hub, tmp_path, "task_arithmetic", {"scaling": 0.5})
    assert local_hub.hub.counters["rate_limited"] >= 1
    assert report["transfer"]["rate_limit_waits"] >= 1 and report["transfer"]["rate_limit_wait_seconds"] >= 1.0
    assert report["transfer"]["retries"] == 0  # waiting for the window is not a failure


def test_range_ignoring_server_costs_one_download_per_file(family_on_hub, tmp_path, realism, local_hub):
    realism(ignore_range=True)
    report = local_and_remote(family_on_hub, tmp_path, "task_arithmetic", {"scaling": 0.5})
    (base, experts), _ = family_on_hub
    weights = sum((f / "model.safetensors").stat().st_size for f in (base, *experts))
    small = sum(p.stat().st_size for f in (base, *experts) for p in f.iterdir() if p.suffix != ".safetensors")
    assert report["transfer"]["whole_file_downloads"] == 3
    # each weights file crossed the wire once (the first ranged request got the whole body and kept it)
    for folder in (base, *experts):
        f = folder / "model.safetensors"
        assert local_hub.hub.blob_bytes[sha256(f)] == f.stat().st_size, (folder.name, dict(local_hub.hub.blob_bytes))
    assert report["transfer"]["bytes_fetched"] <= weights + small


def test_503_cut_connections_and_short_bodies_are_retried(family_on_hub, tmp_path, realism, local_hub,
                                                          monkeypatch):
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)  # no backoff waits in the test
    realism(bridge=True, fail_every=3, cut_every=4, short_every=5)
    report = local_and_remote(family_on_hub, tmp_path, "ties", {"density": 0.3, "topk_scope": "global"})
    c = local_hub.hub.counters
    assert c["failed"] >= 1 and c["cut"] >= 1 and c["short"] >= 1
    assert report["transfer"]["retries"] >= c["failed"] + c["cut"]


def test_small_budget_bounds_the_buffer(family_on_hub, tmp_path, local_hub, monkeypatch):
    monkeypatch.setattr(remote, "MMAP_BYTES", 4096)  # blocks in anonymous mappings, as large ranges are
    remote.configure(read_ahead=96 << 10, connections=3, max_block=8 << 10, head_bytes=HEAD)
    try:
        report = local_and_remote(family_on_hub, tmp_path, "dare", {"drop_rate": 0.5})
    finally:
        remote.configure()
    tr = report["transfer"]
    assert tr["peak_buffered_bytes"] <= 96 << 10 and tr["block_bytes"] == 8 << 10
    assert tr["refetched_bytes"] == 0


def test_budget_smaller_than_a_block_per_source_still_finishes(family_on_hub, tmp_path, local_hub):
    """Every source holds the block it is reading: with a budget below (sources + 1) blocks a read still gets its
    block (past the budget by that block alone) instead of waiting forever."""
    remote.configure(read_ahead=32 << 10, connections=2, max_block=16 << 10, head_bytes=HEAD)
    try:
        report = local_and_remote(family_on_hub, tmp_path, "soup", {})
    finally:
        remote.configure()
    assert report["transfer"]["peak_buffered_bytes"] <= (32 << 10) + 2 * (16 << 10)  # + a block per connection


def test_failed_fetch_is_one_line_and_leaves_nothing(family_on_hub, tmp_path, realism, local_hub, monkeypatch):
    from hfmerge.errors import HfMergeError

    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    realism(fail_every=1)
    _, (base_id, expert_ids) = family_on_hub
    with pytest.raises(HfMergeError) as err:
        merge(MergeConfig("task_arithmetic", base_id, [ModelRef(e) for e in expert_ids]), tmp_path / "out",
              progress=False)
    assert "\n" not in str(err.value) and "HTTP 503" in str(err.value)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_local_reads_without_preadv(family, tmp_path, monkeypatch):
    base, experts = family("llama")
    cfg = MergeConfig("task_arithmetic", str(base), [ModelRef(str(e)) for e in experts], {"scaling": 0.3})
    merge(cfg, tmp_path / "a", progress=False)
    monkeypatch.setattr(sources, "HAVE_PREADV", False)  # as on Windows
    merge(cfg, tmp_path / "b", progress=False)
    assert sha256(tmp_path / "a" / "model.safetensors") == sha256(tmp_path / "b" / "model.safetensors")


def test_spill_folders_of_killed_runs_are_removed(tmp_path):
    dead = tmp_path / "hfmerge-spill-999999999-abc"  # no such process
    dead.mkdir()
    (dead / "0-model.safetensors").write_bytes(b"x" * 10)
    live = tmp_path / f"hfmerge-spill-{os.getppid()}-def"  # a running process's folder stays
    live.mkdir()
    folder = remote.Transfer(spill_dir=tmp_path).spill_dir()
    assert folder.is_dir() and folder.name.startswith(f"hfmerge-spill-{os.getpid()}-")
    assert not dead.exists() and live.exists()
