"""hfmerge Space: compare merges — ours (a results folder), the community's (Hub models tagged ``hfmerge``) and
MergeBench's published figures — and try merging live in the Playground.

Run: ``python space/app.py [--port 7860]``. Environment: HFMERGE_RESULTS (results folder; default the bundled
sample_results/), HFMERGE_HUB=off (no Hub source), HF_ENDPOINT (which Hub), HFMERGE_SPACE_CACHE (Hub cache),
HFMERGE_PLAYGROUND (a small model family for the Playground).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
import space_data as sd  # noqa: E402
import space_plots as sp  # noqa: E402
from space_playground import PlaygroundBackend, PlaygroundResult, default_backend  # noqa: E402

HUB_TTL = float(os.environ.get("HFMERGE_HUB_TTL", "3600"))
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
    summary = "" if store.merges() else f"**No results yet.** {store.notice()} "
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
        names = [s.name for s in backend.methods()[method]]
        params = {n: values[n] for n in names if n in values}
        params = {k: int(v) if k == "k" else v for k, v in params.items()}
        result = backend.merge_and_score(method, params)
    except Exception as e:  # noqa: BLE001 - a failed merge is a message, not a traceback
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        return f"**Merge failed:** {msg}", pd.DataFrame(), playground_plot(backend, history), history
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
    for m in (model_a, model_b):
        try:
            outs.append(backend.generate(m, prompt, int(max_new_tokens)))
        except Exception as e:  # noqa: BLE001
            outs.append(f"[{m}: {str(e).splitlines()[0] if str(e) else e.__class__.__name__}]")
    return outs[0], outs[1]


# ---- the Blocks ----------------------------------------------------------------------------------------------------
def build_app(store: sd.Store | None = None, backend: PlaygroundBackend | None = None,
              backend_note: str | None = None) -> gr.Blocks:
    store = store if store is not None else sd.Store()
    if backend is None and backend_note is None:
        backend, backend_note = default_backend()
    rows = store.rows()
    sort_labels = list(sd.sort_options(rows))

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
                frame, summary = leaderboard(store, sd.ALL_BASES, [], list(sd.SOURCES.values()), sort_labels[0])
                count = gr.Markdown(summary, elem_id="lb-count")
                table = gr.Dataframe(frame, datatype=["markdown"] + ["str"] * (frame.shape[1] - 1),
                                     interactive=False, wrap=True, max_height=560, elem_id="leaderboard",
                                     show_search="search")
                inputs = [base, methods, sources, sort, desc]
                for c in inputs:
                    c.change(lambda *a: leaderboard(store, *a), inputs, [table, count], api_name=False)
                gr.Button("Apply", visible=False).click(lambda *a: leaderboard(store, *a), inputs, [table, count],
                                                        api_name="leaderboard")

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
                go.click(lambda ids: compare(store, ids), [pick], [status, bars, delta, configs], api_name="compare")

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
                    c.change(lambda b, k: tradeoffs(store, b, k), [to_base, cost], [f_plot, c_plot, p_plot],
                             api_name=False)
                demo.load(lambda b, k: tradeoffs(store, b, k), [to_base, cost], [f_plot, c_plot, p_plot],
                          api_name="tradeoffs")

            with gr.Tab("Playground", id="playground"):
                _playground(backend, backend_note)

        refresh.click(lambda: refresh_hub(store), None, [notice, pick, base], api_name="refresh_hub").then(
            lambda *a: leaderboard(store, *a), inputs, [table, count], api_name=False)
    return demo


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

    method.change(on_method, [method], [controls[n] for n in names], api_name=False)

    def on_run(m, *args):
        *values, hist = args
        return playground_run(backend, m, dict(zip(names, values, strict=True)), hist)

    run.click(on_run, [method, *[controls[n] for n in names], history], [status, result, plot, history],
              api_name="playground_merge")

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
    gen.click(lambda p, a, b, n: generate_pair(backend, p, a, b, n), [prompt, model_a, model_b, tokens],
              [out_a, out_b], api_name="generate")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    args = parser.parse_args(argv)
    store = sd.Store()
    if store.hub is not None:
        age = store.hub.age_seconds()
        if age is None or age > HUB_TTL:
            print(store.refresh_hub(), flush=True)
    build_app(store).launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False)


if __name__ == "__main__":
    main()
