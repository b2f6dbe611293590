"""The MergeBench catalog and its aliases."""

import pytest

from hfmerge import catalog
from hfmerge.config import MergeConfig
from hfmerge.errors import HfMergeError


def test_forty_experts_paired_by_domain():
    ids = catalog.experts()
    assert len(ids) == 40 == len(set(ids))
    assert "MergeBench/Llama-3.2-3B_math" in ids and "MergeBench/gemma-2-9b-it_safety" in ids
    assert catalog.domain_of("MergeBench/Llama-3.1-8B-Instruct_coding@abc") == "coding"
    assert catalog.domain_of("someone/Llama-3.1-8B_coding") is None
    assert catalog.validation_data("math") == "MergeBench/math_val"


def test_alias_in_configs_and_pull_lists():
    cfg = MergeConfig.from_dict({"method": "ties", "base_model": "mergebench:Llama-3.2-3B"})
    assert cfg.base_model == "meta-llama/Llama-3.2-3B"
    assert [m.source for m in cfg.models] == [f"MergeBench/Llama-3.2-3B_{d}" for d in catalog.DOMAINS]
    assert catalog.expand(["mergebench:gemma-2-2b", "x/y"])[0] == "google/gemma-2-2b"
    assert len(catalog.expand(["mergebench:gemma-2-2b", "x/y"])) == 7
    with pytest.raises(HfMergeError, match="unknown catalog alias"):
        catalog.expand(["mergebench:Llama-4"])
