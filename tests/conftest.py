"""Shared session fixtures: tiny real model families (built once per test session)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # before huggingface_hub is imported: no Xet on the loopback Hub
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from tests.tiny import make_family  # noqa: E402

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


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    """A Hub-compatible server on 127.0.0.1; huggingface_hub is pointed at it (endpoint, token, cache)."""
    from huggingface_hub import constants

    from hfmerge.localhub import serve

    server = serve(tmp_path_factory.mktemp("hub"))
    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_CACHE)
    saved_env = {k: os.environ.get(k) for k in ("HF_TOKEN", "HF_ENDPOINT")}
    constants.ENDPOINT = server.url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_CACHE = str(tmp_path_factory.mktemp("hf_cache"))
    constants.HF_HUB_DISABLE_XET = True
    os.environ.update(HF_TOKEN=server.token, HF_ENDPOINT=server.url)
    yield server
    server.stop()
    constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_CACHE = saved
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
