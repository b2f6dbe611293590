"""Matplotlib figures of the Space (object API only: no pyplot global state, safe across requests)."""

from __future__ import annotations

from matplotlib.figure import Figure
from space_data import _unique_names, domains_of

COLORS = {
    "soup": "#1f77b4", "task_arithmetic": "#ff7f0e", "ties": "#2ca02c", "dare": "#d62728", "consensus": "#9467bd",
    "localize_stitch": "#8c564b", "localize_stitch (trained)": "#e377c2", "fisher": "#7f7f7f", "regmean": "#bcbd22",
    "base": "#17becf",
}


# every other method of the registry: the rest of matplotlib's tab20, in a fixed order
EXTRA_COLORS = ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d",
                "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
OTHER_METHODS = ["model_stock", "tsv_m", "iso_c", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties",
                 "della", "della_linear", "slerp", "nuslerp"]
COLORS.update(zip(OTHER_METHODS, EXTRA_COLORS, strict=False))
MAX_LABELS = 8  # a crowded plot labels its best points and the Playground's; the legend names the rest


def _color(method: str) -> str:
    return COLORS.get(method, "#333333")


def _point_name(p: dict) -> str:
    """Points are labeled by method; a merge whose name says more (e.g. ``task_arithmetic_tuned``) adds it."""
    name = str(p.get("name") or "").rsplit("/", 1)[-1]
    return p["method"] if name in ("", p["method"]) else f"{p['method']} ({name})"


def empty_figure(message: str, size=(7, 3.6)) -> Figure:
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#555", wrap=True)
    ax.set_axis_off()
    return fig


def domain_bars(rows: list[dict]) -> Figure:
    """Grouped bars: per-domain scores (%) of each merge, one group per domain."""
    domains = domains_of(rows)
    if not rows or not domains:
        return empty_figure("No per-domain scores for these merges (no results yet).")
    names = _unique_names(rows)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(rows)
    for i, (name, r) in enumerate(zip(names, rows, strict=True)):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(domains))]
        ys = [r["domains"].get(d) or 0.0 for d in domains]
        bars = ax.bar(xs, ys, width, label=name)
        for x, d, b in zip(xs, domains, bars, strict=True):
            if r["domains"].get(d) is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
            else:
                ax.text(x, b.get_height(), f"{b.get_height():.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(domains)), domains)
    ax.set_ylabel("score (%)")
    ax.set_title("Per-domain scores")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return fig


def tradeoff(rows: list[dict], x: str, xlabel: str, title: str, extra: list[dict] | None = None) -> Figure:
    """Normalized performance (y) vs ``x`` (a row key), one point per merge labeled by method."""
    points = [r for r in rows if r.get("norm_perf") is not None and r.get(x) is not None]
    points += [p for p in extra or [] if p.get("norm_perf") is not None and p.get(x) is not None]
    if not points:
        return empty_figure(f"No merge has both normalized performance and {xlabel.split(' (')[0].lower()} yet.")
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    spots: dict[tuple[int, int], list[str]] = {}
    where: dict[tuple[int, int], tuple[float, float]] = {}
    xs, ys = [p[x] for p in points], [p["norm_perf"] for p in points]
    dx, dy = (max(xs) - min(xs)) * 0.04 or 1.0, (max(ys) - min(ys)) * 0.04 or 1.0
    groups: dict[tuple[str, str], list[dict]] = {}  # one scatter per method and marker: far cheaper to draw
    for p in points:
        marker = "*" if p.get("source") == "playground" else ("s" if p.get("source") == "hub" else "o")
        groups.setdefault((p["method"], marker), []).append(p)
    seen = set()
    for (method, marker), group in groups.items():
        ax.scatter([p[x] for p in group], [p["norm_perf"] for p in group], color=_color(method), marker=marker,
                   s=90 if marker == "*" else 45, label=None if method in seen else method, edgecolor="black",
                   linewidth=0.4, zorder=3)
        seen.add(method)
    playground = set()
    for p in points:
        key = (round(p[x] / dx), round(p["norm_perf"] / dy))  # points this close share one label
        if p.get("source") == "playground":
            playground.add(key)
        where.setdefault(key, (p[x], p["norm_perf"]))
        names = spots.setdefault(key, [])
        name = p.get("label") or _point_name(p)
        if name not in names:
            names.append(name)
    shown = sorted(spots, key=lambda k: -where[k][1])[:MAX_LABELS] if len(spots) > MAX_LABELS else list(spots)
    low, high = _labels(ax, spots, where, shown + [k for k in spots if k in playground and k not in shown], xs, ys)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("normalized performance (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if x in ("merge_seconds", "peak_gib") and max(p[x] for p in points) / max(min(p[x] for p in points), 1e-9) > 50:
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.12)
    y0, y1 = ax.get_ylim()
    ax.set_ylim(min(y0, low), max(y1, high))  # stacked labels stay inside the axes
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _labels(ax, spots: dict, where: dict, keys: list, xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Annotate the points ``keys`` with their names, top to bottom; a label that could reach one placed above it
    on the same side is stacked below that one (with a thin line to its point), so labels never overlap. Returns
    the y span the labels need (data units, half a line to spare)."""
    line = ((max(ys) - min(ys)) or 1.0) * 0.05  # one label line in y units (the axes are ≈ 25 lines tall)
    placed: list[tuple[bool, int, float]] = []  # (goes left, x bucket, bottom) of the labels placed so far
    low, high = min(ys), max(ys)
    for key in sorted(keys, key=lambda k: -where[k][1]):
        px, py = where[key]
        right = px > min(xs) + 0.7 * (max(xs) - min(xs))  # labels of right-hand points go to their left
        bottom = py + 0.2 * line
        for side, bx, above in placed:
            if side == right and abs(bx - key[0]) <= 12:  # within ≈ half the x range
                bottom = min(bottom, above - len(spots[key]) * line)
        placed.append((right, key[0], bottom))
        low, high = min(low, bottom - 0.5 * line), max(high, bottom + (len(spots[key]) + 0.5) * line)
        ax.annotate("\n".join(spots[key]), (px, py), xytext=(-6 if right else 6, bottom),
                    textcoords=("offset points", "data"), fontsize=7, va="bottom", ha="right" if right else "left",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="#999999") if bottom < py - 0.5 * line else None)
    return low, high


def published_strip(rows: list[dict]) -> Figure:
    """Table 7: normalized performance per method, one dot per base (MergeBench's headline comparison)."""
    pub = [r for r in rows if r["source"] == "published" and not r["base"].startswith("Overall")]
    if not pub:
        return empty_figure("No published figures selected.")
    methods = sorted({r["method"] for r in pub}, key=lambda m: sum(
        r["norm_perf"] for r in pub if r["method"] == m) / sum(1 for r in pub if r["method"] == m))
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    for i, m in enumerate(methods):
        ys = [r["norm_perf"] for r in pub if r["method"] == m]
        ax.scatter([i] * len(ys), ys, color=_color(m), edgecolor="black", linewidth=0.4, zorder=3)
        ax.hlines(sum(ys) / len(ys), i - 0.3, i + 0.3, color="black", linewidth=1.5, zorder=4)
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("normalized performance (%)")
    ax.set_title("Published (MergeBench paper, Table 7): one dot per base, bar = mean")
    ax.grid(axis="y", alpha=0.3)
    return fig
