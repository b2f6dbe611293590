"""Shared session fixtures: tiny real model families (built once per test session)."""

from __future__ import annotations

import os

import pytest

from tests.tiny import make_family

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

FAMILIES = {
    "llama": dict(arch="llama", tied=False),
    "llama_tied": dict(arch="llama", tied=True, shard="20KB"),
    "gemma2": dict(arch="gemma2", tied=True),
}


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """family(name) -> (base_path, [expert_paths]); each family is built once per session."""
    cache = {}

    def get(name: str = "llama"):
        if name not in cache:
            cache[name] = make_family(tmp_path_factory.mktemp(name), **FAMILIES[name])
        return cache[name]

    return get
