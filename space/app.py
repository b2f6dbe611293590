"""hfmerge Space: compare merges — ours (a results folder), the community's (Hub models tagged ``hfmerge``) and
MergeBench's published figures — and try merging live in the Playground.

Run: ``python space/app.py [--port 7860]``. Environment: HFMERGE_RESULTS (results folder; default the bundled
sample_results/), HFMERGE_HUB=off (no Hub source), HF_ENDPOINT (which Hub), HFMERGE_SPACE_CACHE (Hub cache),
HFMERGE_PLAYGROUND (a small model family for the Playground).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
import space_data as sd  # noqa: E402
import space_plots as sp  # noqa: E402
from space_playground import PlaygroundBackend, PlaygroundResult, default_backend  # noqa: E402

HUB_TTL = float(os.environ.get("HFMERGE_HUB_TTL", "3600"))
# Load bounds: the Playground's merges and generations run one at a time (gradio queue, one concurrency group),
# each stopped after PLAYGROUND_SECONDS; tables and plots have their own group and never wait behind them.
PLAYGROUND_SECONDS = float(os.environ.get("HFMERGE_PLAYGROUND_SECONDS", "60"))
HEAVY = "playground"  # concurrency_id of Playground merges and generations
HEAVY_LIMIT = int(os.environ.get("HFMERGE_PLAYGROUND_CONCURRENCY", "1"))
LIGHT = "tables"  # concurrency_id of the leaderboard, compare, trade-offs, Hub refresh
LIGHT_LIMIT = int(os.environ.get("HFMERGE_TABLES_CONCURRENCY", "4"))
LIGHT_QUEUE = {"concurrency_id": LIGHT, "concurrency_limit": LIGHT_LIMIT}
QUEUE_SIZE = int(os.environ.get("HFMERGE_QUEUE_SIZE", "200"))
MAX_NEW_TOKENS, MAX_PROMPT_CHARS = 64, 500
CSS = """
#leaderboard thead th, #cmp-delta thead th, #cmp-config thead th { vertical-align: bottom; }
#leaderboard thead th .header-content, #leaderboard thead th span { white-space: nowrap; }
"""
SOURCE_LABELS = {v: k for k, v in sd.SOURCES.items()}
COST = {"Merge seconds": ("merge_seconds", "merge cost (seconds, wall clock)"),
        "Peak memory": ("peak_gib", "merge cost (peak memory, GiB)")}
INTRO = """# hfmerge — compare merges
Merges of fine-tuned checkpoints of one base model with the [MergeBench](https://github.com/uiuctml/MergeBench)
methods, made with **hfmerge**. Rows come from a results folder (`hfmerge eval` / `report` / `demo`), from Hub
models tagged `hfmerge`, and from MergeBench's Table 7 (**published (MergeBench paper)**: only the normalized
performance per base × method is published). *Normalized performance* = mean over domains of merge score / the
domain expert's score; *forgetting* = merge / base on general tasks (100 % = nothing lost)."""


# ---- handlers (plain functions: the tests call them directly) ---------------------------------------------------
def leaderboard(store: sd.Store, base: str | None, methods: list[str] | None, sources: list[str] | None,
                sort_label: str | None, descending: bool = True) -> tuple[pd.DataFrame, str]:
    rows = store.rows()
    keys = [SOURCE_LABELS.get(s, s) for s in sources] if sources is not None else None
    shown = sd.filter_rows(rows, base, methods, keys)
    shown = sd.sort_rows(shown, sd.sort_options(rows).get(sort_label or "", "norm_perf"), bool(descending))
    frame = sd.leaderboard_frame(shown, rows)
    summary = "" if store.merges() else "**No results yet** (see the note above). "
    if not shown:
        summary += "No merge matches these filters."
    else:
        summary += f"{len(shown)} of {len(rows)} rows shown."
        missing = sum(1 for r in shown if r["status"] not in ("ok", sd.PUBLISHED))
        if missing:
            summary += f" {missing} without (normalized) results yet — see Status."
    return frame, summary


def compare(store: sd.Store, ids: list[str] | None):
    """(status, grouped bars, delta table, configs side by side) for 2–4 merges."""
    rows = store.by_id(list(ids or []))
    if len(rows) < 2:
        return ("Pick 2 to 4 merges to compare.", sp.empty_figure("Pick 2 to 4 merges."), pd.DataFrame(),
                pd.DataFrame())
    if len(rows) > 4:
        rows = rows[:4]
    names = sd._unique_names(rows)
    status = f"Comparing {len(rows)} merges: " + ", ".join(names) + "."
    empty = [n for n, r in zip(names, rows, strict=True) if not r["domains"] and r["norm_perf"] is None]
    if empty:
        status += " No results yet for " + ", ".join(empty) + "."
    return status, sp.domain_bars(rows), sd.compare_frame(rows), sd.config_frame(rows)


def tradeoffs(store: sd.Store, base: str | None, cost_label: str | None):
    rows = sd.filter_rows(store.rows(), base)
    merges = [r for r in rows if r["source"] != "published"]
    key, label = COST.get(cost_label or "", COST["Merge seconds"])
    fig_f = sp.tradeoff(merges, "forgetting", "forgetting: knowledge retained, merge / base (%)",
                        "Normalized performance vs forgetting")
    fig_c = sp.tradeoff(merges, key, label, "Normalized performance vs merge cost")
    return fig_f, fig_c, sp.published_strip(rows)


class _Rendered:
    """Outputs of the table and figure handlers (figures already encoded as PNG), kept per (handler, inputs, data
    version): drawing and encoding a figure costs 0.1-1 s of CPU, the same views are asked for again and again,
    and every visitor shares the process's two cores. Visitors asking at once for a view not made yet wait for
    the one request making it (single flight) instead of each making it."""

    def __init__(self, size: int = 256):
        self.size, self.lock, self.items, self.gates = size, threading.Lock(), {}, {}

    def get(self, key, make):
        with self.lock:
            if key in self.items:
                return self.items[key]
            gate = self.gates.setdefault(key, threading.Lock())
        with gate:
            with self.lock:
                if key in self.items:
                    return self.items[key]
            try:
                value = make()
                with self.lock:
                    if len(self.items) >= self.size:
                        self.items.pop(next(iter(self.items)))
                    self.items[key] = value
            finally:
                with self.lock:
                    self.gates.pop(key, None)
        return value


RENDERED = _Rendered()


def _encoded(value):
    """A matplotlib figure as the PNG data gr.Plot passes through unchanged."""
    from gradio.components.plot import PlotData
    from gradio.processing_utils import encode_plot_to_base64
    from matplotlib.figure import Figure

    if isinstance(value, Figure):
        return PlotData(type="matplotlib", plot=encode_plot_to_base64(value, "png"))
    return value


def rendered(store: sd.Store, handler):
    """``handler(store, *args)`` for an event, served from RENDERED while the data have not changed."""
    def fn(*args):
        key = (handler.__name__, store.version(), json_key(args))
        return RENDERED.get(key, lambda: tuple(_encoded(v) for v in handler(store, *args)))

    fn.__name__ = handler.__name__
    return fn


def default_board(rows: list[dict]) -> tuple:
    """The leaderboard's inputs as a page opens: every base, method and source, the first sort, descending."""
    return sd.ALL_BASES, [], list(sd.SOURCES.values()), next(iter(sd.sort_options(rows))), True


def warm(store: sd.Store) -> None:
    """Make the views visitors open first (the default leaderboard, each base's trade-off plots) before the app
    serves anyone (≈ 1 s per base on one core), so the first visitors neither wait for them nor share the cores
    with their drawing."""
    rows, plots = store.rows(), rendered(store, tradeoffs)
    rendered(store, leaderboard)(*default_board(rows))
    for base in sd.bases_of(rows):
        for cost in COST:
            plots(base, cost)


def json_key(value) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def compare_choices(store: sd.Store) -> list[tuple[str, str]]:
    return [(f"{r['name']} · {r['method']} ({sd.SOURCES[r['source']]})", r["id"]) for r in store.merges()]


def refresh_hub(store: sd.Store):
    notice = store.refresh_hub()
    return notice, gr.update(choices=compare_choices(store)), gr.update(choices=sd.bases_of(store.rows()))


def playground_run(backend: PlaygroundBackend | None, method: str, values: dict, history: list[dict] | None):
    """Merge with ``values`` (all slider values; the method's own are used), score, add the point."""
    history = list(history or [])
    if backend is None:
        return "The Playground is not available here.", pd.DataFrame(), playground_plot(None, history), history
    try:
        if method not in backend.methods():
            raise ValueError(f"pick a method from the list ({', '.join(backend.methods())})")
        names = [s.name for s in backend.methods()[method]]
        params = {n: values[n] for n in names if n in values}
        params = {k: int(v) if k == "k" else v for k, v in params.items()}
        result = backend.merge_and_score(method, params, deadline=time.monotonic() + PLAYGROUND_SECONDS)
    except Exception as e:  # noqa: BLE001 - a failed merge is a message, not a traceback
        return f"**Merge failed:** {visitor_message(e)}", pd.DataFrame(), playground_plot(backend, history), history
    history.append(_point(result))
    status = (f"Merged with **{method}** ({sd.params_text(result.parameters)}) in {result.merge_seconds:.1f} s, "
              f"scored in {result.score_seconds:.1f} s: normalized performance "
              f"{_fmt(result.norm_perf)} %, forgetting {_fmt(result.forgetting)} %.")
    return status, playground_frame(result), playground_plot(backend, history), history


def _fmt(v):
    return "n/a" if v is None else f"{v:.1f}"


def _point(r: PlaygroundResult) -> dict:
    short = {"scaling": "λ", "density": "K", "drop_rate": "p", "mask_lambda": "λᵢ", "sparsity": "s"}
    label = r.method + " " + ",".join(f"{short.get(k, k)}={v:g}" for k, v in r.parameters.items()
                                      if isinstance(v, int | float))
    return {"method": r.method, "label": label.strip(), "source": "playground", "norm_perf": r.norm_perf,
            "forgetting": r.forgetting, "merge_seconds": r.merge_seconds}


def playground_frame(r: PlaygroundResult) -> pd.DataFrame:
    domains = list(r.domains)
    return pd.DataFrame({
        "Domain": domains,
        "Score %": [round(r.domains[d], 2) for d in domains],
        "Normalized % (merge / expert)": [None if d not in r.normalized else round(r.normalized[d], 2)
                                          for d in domains],
        "Exact match %": [round(r.exact_match.get(d, 0.0), 1) for d in domains],
    })


def playground_plot(backend: PlaygroundBackend | None, history: list[dict]):
    refs = backend.reference_points() if backend is not None else []
    if not history:
        return sp.tradeoff([], "forgetting", "forgetting: retained, merge / base (%)",
                           "Playground: normalized performance vs forgetting", extra=refs) if refs else \
            sp.empty_figure("Merge something: its point appears here.")
    return sp.tradeoff([], "forgetting", "forgetting: retained, merge / base (%)",
                       "Playground: normalized performance vs forgetting", extra=refs + history)


def generate_pair(backend: PlaygroundBackend | None, prompt: str, model_a: str, model_b: str, max_new_tokens=24):
    if backend is None:
        return "The Playground is not available here.", ""
    if not (prompt or "").strip():
        return "Type a prompt first.", ""
    outs = []
    n = max(1, min(int(max_new_tokens or 1), MAX_NEW_TOKENS))
    for m in (model_a, model_b):
        try:
            outs.append(backend.generate(m, prompt[:MAX_PROMPT_CHARS], n, max_seconds=PLAYGROUND_SECONDS / 2))
        except Exception as e:  # noqa: BLE001 - shown to the visitor as a sentence
            outs.append(f"[{m}: {visitor_message(e)}]")
    return outs[0], outs[1]


def visitor_message(e: BaseException) -> str:
    """Our own errors (bad parameters, time limit) are one actionable line; anything else is logged for the
    Space's owner and the visitor gets a sentence, never an exception's class or text."""
    from space_playground import PlaygroundError

    if isinstance(e, PlaygroundError | ValueError) or type(e).__name__ == "HfMergeError":
        return (str(e).splitlines() or ["invalid parameters"])[0]
    traceback.print_exception(e, file=sys.stderr)
    return "something went wrong on the server with these settings; try other parameters or another method."


# ---- the Blocks ----------------------------------------------------------------------------------------------------
def build_app(store: sd.Store | None = None, backend: PlaygroundBackend | None = None,
              backend_note: str | None = None) -> gr.Blocks:
    store = store if store is not None else sd.Store()
    if backend is None and backend_note is None:
        backend, backend_note = default_backend()
    rows = store.rows()
    sort_labels = list(sd.sort_options(rows))
    board = rendered(store, leaderboard)

    with gr.Blocks(title="hfmerge — compare merges") as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Leaderboard", id="leaderboard"):
                notice = gr.Markdown(store.notice() or " ", elem_id="lb-notice")
                with gr.Row():
                    base = gr.Dropdown(sd.bases_of(rows), value=sd.ALL_BASES, label="Base", elem_id="lb-base")
                    methods = gr.Dropdown(sd.methods_of(rows), value=[], multiselect=True,
                                          label="Methods (none = all)", elem_id="lb-methods")
                    sources = gr.CheckboxGroup(list(sd.SOURCES.values()), value=list(sd.SOURCES.values()),
                                               label="Sources", elem_id="lb-sources")
                with gr.Row():
                    sort = gr.Dropdown(sort_labels, value=sort_labels[0], label="Sort by", elem_id="lb-sort")
                    desc = gr.Checkbox(True, label="Descending", elem_id="lb-desc")
                    refresh = gr.Button("Refresh Hub", elem_id="refresh-hub", size="sm")
                frame, summary = board(*default_board(rows))  # made already when the app was warmed
                count = gr.Markdown(summary, elem_id="lb-count")
                table = gr.Dataframe(frame, datatype=["markdown"] + ["str"] * (frame.shape[1] - 1),
                                     interactive=False, wrap=True, max_height=560, elem_id="leaderboard",
                                     show_search="search")
                inputs = [base, methods, sources, sort, desc]
                for c in inputs:
                    c.change(board, inputs, [table, count], api_name=False, **LIGHT_QUEUE)
                gr.Button("Apply", visible=False).click(board, inputs, [table, count], api_name="leaderboard",
                                                        **LIGHT_QUEUE)

            with gr.Tab("Compare", id="compare"):
                choices = compare_choices(store)
                pick = gr.Dropdown(choices, value=[c[1] for c in choices[:2]], multiselect=True, max_choices=4,
                                   label="Merges (2–4)", elem_id="cmp-pick")
                go = gr.Button("Compare", variant="primary", elem_id="compare-btn")
                status = gr.Markdown("Pick 2 to 4 merges and press Compare.", elem_id="cmp-status")
                bars = gr.Plot(label="Per-domain scores", elem_id="cmp-bars", format="png", show_label=False)
                delta = gr.Dataframe(label="Measures and deltas (vs the first merge)", interactive=False,
                                     elem_id="cmp-delta")
                configs = gr.Dataframe(label="Configs side by side", interactive=False, wrap=True,
                                       elem_id="cmp-config")
                go.click(rendered(store, compare), [pick], [status, bars, delta, configs], api_name="compare",
                         **LIGHT_QUEUE)

            with gr.Tab("Trade-offs", id="tradeoffs"):
                gr.Markdown("As in MergeBench's figures: higher is better on both axes of the left plot; cheaper "
                            "is better on the right. ○ results folder, □ Hub. Published rows carry only the "
                            "normalized performance, so they get their own plot below.")
                with gr.Row():
                    to_base = gr.Dropdown(sd.bases_of(rows), value=sd.ALL_BASES, label="Base", elem_id="to-base")
                    cost = gr.Radio(list(COST), value="Merge seconds", label="Cost", elem_id="to-cost-kind")
                with gr.Row():
                    f_plot = gr.Plot(label="Normalized performance vs forgetting", elem_id="to-forgetting",
                                     format="png", show_label=False)
                    c_plot = gr.Plot(label="Normalized performance vs merge cost", elem_id="to-cost", format="png",
                                     show_label=False)
                p_plot = gr.Plot(label="Published (MergeBench paper, Table 7)", elem_id="to-published",
                                 format="png", show_label=False)
                for c in (to_base, cost):
                    c.change(rendered(store, tradeoffs), [to_base, cost], [f_plot, c_plot, p_plot],
                             api_name=False, **LIGHT_QUEUE)
                demo.load(rendered(store, tradeoffs), [to_base, cost], [f_plot, c_plot, p_plot],
                          api_name="tradeoffs", **LIGHT_QUEUE)

            with gr.Tab("Playground", id="playground"):
                _playground(backend, backend_note)

        refresh.click(lambda: refresh_hub(store), None, [notice, pick, base], api_name="refresh_hub",
                      **LIGHT_QUEUE).then(board, inputs, [table, count], api_name=False, **LIGHT_QUEUE)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=LIGHT_LIMIT)
    return demo


def launch(demo: gr.Blocks, **kwargs):
    """``demo.launch`` with the Space's styles (Gradio 6 takes css at launch)."""
    kwargs.setdefault("share", False)
    kwargs.setdefault("ssr_mode", False)
    return demo.launch(css=CSS, **kwargs)


class _Running:
    """How many Playground runs are going now (for the "busy, queued" message)."""

    def __init__(self):
        self.n, self.lock = 0, threading.Lock()

    def __enter__(self):
        with self.lock:
            self.n += 1

    def __exit__(self, *exc):
        with self.lock:
            self.n -= 1


HEAVY_RUNS = _Running()


def announce() -> str:
    """Shown at once on Merge & score, before the run gets its turn in the queue."""
    if HEAVY_RUNS.n >= HEAVY_LIMIT:
        return (f"**Busy, queued:** another visitor's Playground run is going; yours starts as soon as it ends "
                f"(each run takes at most {PLAYGROUND_SECONDS:.0f} s). The queue position shows here.")
    return "Merging and scoring…"


def _playground(backend: PlaygroundBackend | None, note: str | None) -> None:
    if backend is None:
        gr.Markdown(f"**Playground unavailable.** {note or ''}", elem_id="pg-status")
        return
    specs = backend.methods()
    gr.Markdown(backend.describe(), elem_id="pg-about")
    first = next(iter(specs))
    method = gr.Dropdown(list(specs), value=first, label="Method", elem_id="pg-method")
    controls: dict[str, gr.components.Component] = {}
    with gr.Row():
        for sliders in specs.values():
            for s in sliders:
                if s.name in controls:
                    continue
                visible = any(x.name == s.name for x in specs[first])
                if s.choices:
                    controls[s.name] = gr.Radio(list(s.choices), value=s.default, label=s.name, info=s.help,
                                                visible=visible, elem_id=f"pg-{s.name}")
                else:
                    controls[s.name] = gr.Slider(s.low, s.high, value=s.default, step=s.step, label=s.name,
                                                 info=s.help, visible=visible, elem_id=f"pg-{s.name}")
    names = list(controls)
    run = gr.Button("Merge & score", variant="primary", elem_id="pg-run")
    gr.Markdown(f"One Playground run (merge or generation) at a time for everyone: when another visitor's run is "
                f"going, yours waits in the queue (its place shows on the result) and each run stops after "
                f"{PLAYGROUND_SECONDS:.0f} s. The other tabs never wait for it.", elem_id="pg-queue-note")
    status = gr.Markdown("Pick a method, move its parameters, press Merge & score.", elem_id="pg-status")
    history = gr.State([])
    with gr.Row():
        result = gr.Dataframe(label="Scores of the last merge", interactive=False, elem_id="pg-table")
        plot = gr.Plot(playground_plot(backend, []), label="Trade-off (this session)", elem_id="pg-plot",
                       format="png", show_label=False)

    def on_method(m):
        wanted = {s.name: s for s in specs.get(m, [])}
        return [gr.update(visible=n in wanted, **({"value": wanted[n].default} if n in wanted else {}))
                for n in names]

    method.change(on_method, [method], [controls[n] for n in names], api_name=False, **LIGHT_QUEUE)

    def on_run(m, *args):
        *values, hist = args
        with HEAVY_RUNS:
            return playground_run(backend, m, dict(zip(names, values, strict=True)), hist)

    run.click(announce, None, [status], api_name=False, queue=False).then(
        on_run, [method, *[controls[n] for n in names], history], [status, result, plot, history],
        api_name="playground_merge", concurrency_id=HEAVY, concurrency_limit=HEAVY_LIMIT)

    gr.Markdown("### Generate side by side")
    models = backend.models()
    with gr.Row():
        prompt = gr.Textbox("add: 2 + 3 =", label="Prompt", elem_id="pg-prompt", scale=3)
        tokens = gr.Slider(1, 64, value=16, step=1, label="New tokens", elem_id="pg-tokens")
    with gr.Row():
        model_a = gr.Dropdown(models, value=models[0], label="Model A", elem_id="pg-model-a")
        model_b = gr.Dropdown(models, value=models[-1], label="Model B", elem_id="pg-model-b")
    gen = gr.Button("Generate", elem_id="pg-generate")
    with gr.Row():
        out_a = gr.Textbox(label="Model A says", elem_id="pg-out-a", interactive=False)
        out_b = gr.Textbox(label="Model B says", elem_id="pg-out-b", interactive=False)
    def on_generate(p, a, b, n):
        with HEAVY_RUNS:
            return generate_pair(backend, p, a, b, n)

    gen.click(on_generate, [prompt, model_a, model_b, tokens], [out_a, out_b], api_name="generate",
              concurrency_id=HEAVY, concurrency_limit=HEAVY_LIMIT)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    args = parser.parse_args(argv)
    try:  # tiny Playground models: one core merges, the other serves the tables
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    store = sd.Store()
    if store.hub is not None:
        age = store.hub.age_seconds()
        if age is None or age > HUB_TTL:
            print(store.refresh_hub(), flush=True)
    t0 = time.perf_counter()
    warm(store)
    print(f"views ready in {time.perf_counter() - t0:.1f} s", flush=True)
    launch(build_app(store), server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
