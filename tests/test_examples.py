"""Every shipped example config loads and names a valid method with in-range parameters."""

from pathlib import Path

import pytest

from hfmerge.config import MergeConfig
from hfmerge.methods.registry import get_method

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_config_is_valid(path):
    cfg = MergeConfig.from_file(path)
    method = get_method(cfg.method)
    params = method.resolve(cfg.parameters)
    assert cfg.models and cfg.base_model
    if method.stats(params):
        assert all(m.data for m in cfg.models)


def test_examples_cover_every_method():
    from hfmerge.methods.registry import METHODS

    assert {MergeConfig.from_file(p).method for p in EXAMPLES} == set(METHODS)
