"""Methods by name."""

from hfmerge.methods import (
    breadcrumbs,
    consensus,
    dare,
    dare_ties,
    della,
    fisher,
    iso_c,
    localize_stitch,
    model_stock,
    regmean,
    slerp,
    soup,
    task_arithmetic,
    ties,
    tsv_m,
)
from hfmerge.methods.base import Method
from hfmerge.suggest import unknown

METHODS: dict[str, Method] = {
    m.METHOD.name: m.METHOD for m in (soup, task_arithmetic, ties, dare, consensus, localize_stitch, fisher, regmean)
}
METHODS.update({m.METHOD.name: m.METHOD for m in (tsv_m, iso_c)})
METHODS.update({m.name: m for m in (slerp.METHOD, dare_ties.METHOD, breadcrumbs.METHOD, breadcrumbs.TIES_METHOD,
                                     della.METHOD, della.LINEAR_METHOD, model_stock.METHOD, slerp.NUSLERP,
                                     dare_ties.LINEAR_METHOD)})


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]
