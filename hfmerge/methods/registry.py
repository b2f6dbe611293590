"""Methods by name."""

from hfmerge.errors import HfMergeError
from hfmerge.methods import consensus, dare, fisher, localize_stitch, regmean, soup, task_arithmetic, ties
from hfmerge.methods.base import Method

METHODS: dict[str, Method] = {
    m.METHOD.name: m.METHOD for m in (soup, task_arithmetic, ties, dare, consensus, localize_stitch, fisher, regmean)
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise HfMergeError(f"unknown method {name!r} (valid: {', '.join(METHODS)})")
    return METHODS[name]
