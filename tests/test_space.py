"""The Space (space/): loaders, filters, sorts, plots, empty states, the Hub source (offline too), the
Playground backend on a tiny family, and the API through gradio_client against the app on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

SPACE = Path(__file__).resolve().parents[1] / "space"
sys.path.insert(0, str(SPACE))

import space_data as sd  # noqa: E402
import space_plots as sp  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

SAMPLE = SPACE / "sample_results"
ALL_SOURCES = list(sd.SOURCES.values())
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")  # from gradio/queueing.py


@pytest.fixture
def store(tmp_path):
    return sd.Store(SAMPLE, use_hub=False)


def _copy_sample(dest: Path, names: list[str]) -> Path:
    for n in names:
        shutil.copytree(SAMPLE / n, dest / n)
    return dest


# ---- loaders --------------------------------------------------------------------------------------------------------
def test_sample_results_load_every_merge():
    rows, notice = sd.load_results_folder(SAMPLE)
    assert notice == "" and len(rows) >= 6
    by_name = {r["name"]: r for r in rows}
    ties = by_name["ties"]
    report = json.loads((SAMPLE / "ties" / "merge_report.json").read_text())
    scores = json.loads((SAMPLE / "ties" / "scores.json").read_text())
    assert ties["method"] == "ties" and ties["source"] == "local"
    assert ties["parameters"]["density"] == report["parameters"]["density"]
    assert ties["norm_perf"] == pytest.approx(100 * scores["normalized"]["mean"], abs=0.01)
    assert ties["forgetting"] == pytest.approx(100 * scores["forgetting"], abs=0.01)
    assert ties["merge_seconds"] == report["merge_seconds"]
    assert ties["peak_gib"] == pytest.approx(report["peak_rss_bytes"] / 2**30, abs=1e-3)
    assert set(ties["domains"]) == set(scores["domains"])
    assert ties["base"] == sd.short_base(ties["base_ref"])
    assert by_name.get("localize_stitch_trained", {}).get("method", "localize_stitch (trained)") == \
        "localize_stitch (trained)"


def test_missing_and_broken_files_are_states_not_crashes(tmp_path):
    rows, notice = sd.load_results_folder(tmp_path / "nope")
    assert rows == [] and "does not exist" in notice and "HFMERGE_RESULTS" in notice
    rows, notice = sd.load_results_folder(tmp_path)
    assert rows == [] and "No merges" in notice
    only_report = tmp_path / "fresh"
    only_report.mkdir()
    shutil.copy(SAMPLE / "ties" / "merge_report.json", only_report)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "merge_report.json").write_text("{not json")
    (tmp_path / "unrelated").mkdir()
    rows, notice = sd.load_results_folder(tmp_path)
    by = {r["name"]: r for r in rows}
    assert set(by) == {"fresh", "broken"}
    assert by["fresh"]["status"] == "no results yet" and by["fresh"]["norm_perf"] is None
    assert by["fresh"]["method"] == "ties" and by["fresh"]["merge_seconds"] is not None
    assert by["broken"]["problems"] and by["broken"]["method"] == "unknown"
    frame = sd.leaderboard_frame(rows)
    assert list(frame["Status"]).count("no results yet") == 2


def test_demo_folder_means_its_results(tmp_path, monkeypatch):
    """HFMERGE_RESULTS=demo_out finds the merges in demo_out/results (what `hfmerge demo` writes)."""
    _copy_sample(tmp_path / "demo_out" / "results", ["ties", "soup"])
    (tmp_path / "demo_out" / "mini-llama").mkdir()  # the demo's family folder is not a merge
    monkeypatch.setenv("HFMERGE_RESULTS", str(tmp_path / "demo_out"))
    rows, notice = sd.load_results_folder()
    assert notice == "" and sorted(r["name"] for r in rows) == ["soup", "ties"]
    monkeypatch.delenv("HFMERGE_RESULTS")
    assert sd.results_dir() in (sd.SAMPLE_RESULTS, sd.DEPLOYED_RESULTS)


def test_empty_store_says_it_once_and_hub_errors_are_sentences(tmp_path, monkeypatch):
    import app
    from huggingface_hub.errors import OfflineModeIsEnabled

    empty = sd.Store(tmp_path / "missing", use_hub=False)
    _, summary = app.leaderboard(empty, sd.ALL_BASES, [], ALL_SOURCES, None)
    assert "does not exist" in empty.notice() and "does not exist" not in summary  # the notice shows once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    msg = sd.hub_problem(OfflineModeIsEnabled("Cannot reach https://x: offline mode is enabled. To disable it"),
                         "https://huggingface.co")
    assert msg == "Hub unreachable: offline mode is on (HF_HUB_OFFLINE); unset it to list Hub models."
    msg = sd.hub_problem(ConnectionError("[Errno 111] Connection refused"), "http://127.0.0.1:9")
    assert msg == "Hub unreachable: no answer from http://127.0.0.1:9 (offline?); press Refresh Hub to try again."
    assert "Error" not in app.visitor_message(RuntimeError("CUDA out of memory in aten::mm"))
    assert app.visitor_message(ValueError("density must be in (0, 1]")) == "density must be in (0, 1]"


def test_report_mapping_and_results_only_measures(tmp_path):
    """scores.json in `hfmerge report -o` form (name -> measures); results.json carrying the measures."""
    a = _copy_sample(tmp_path, ["ties", "soup"])
    scores = json.loads((a / "ties" / "scores.json").read_text())
    (a / "ties" / "scores.json").write_text(json.dumps({"ties": scores}))
    (a / "soup" / "scores.json").unlink()
    rows = {r["name"]: r for r in sd.load_results_folder(a)[0]}
    assert rows["ties"]["norm_perf"] == pytest.approx(100 * scores["normalized"]["mean"], abs=0.01)
    soup_results = json.loads((a / "soup" / "results.json").read_text())
    assert rows["soup"]["forgetting"] == pytest.approx(100 * soup_results["forgetting"], abs=0.01)
    assert set(rows["soup"]["domains"]) == set(sd.DOMAINS)  # derived from the task names


def test_published_rows_are_table7_and_marked():
    rows = sd.published_rows()
    assert len(rows) == 9 * 9
    assert all(r["source"] == "published" and r["status"] == sd.PUBLISHED for r in rows)
    ls = next(r for r in rows if r["base"].startswith("Overall") and r["method"] == "localize_stitch (trained)")
    assert ls["norm_perf"] == 89.7
    ties = next(r for r in rows if r["base"] == "Gemma-2-9b-it" and r["method"] == "ties")
    assert ties["norm_perf"] == 101.1 and ties["base_ref"] == "google/gemma-2-9b-it"
    frame = sd.leaderboard_frame(rows)
    assert set(frame["Source"]) == {"published (MergeBench paper)"}


# ---- filters and sorts ----------------------------------------------------------------------------------------------
def test_filter_and_sort_by_every_measure(store):
    rows = store.rows()
    opts = sd.sort_options(rows)
    assert {"Normalized performance", "Forgetting (retained, %)", "Beats base", "Gain over best expert",
            "Merge seconds", "Peak memory"} <= set(opts)
    assert any(k.startswith("Score: ") for k in opts)
    for key in opts.values():
        for desc in (True, False):
            out = sd.sort_rows(rows, key, desc)
            vals = [sd._value(r, key) for r in out]
            have = [v for v in vals if v is not None]
            assert have == sorted(have, reverse=desc)
            assert all(v is None for v in vals[len(have):])  # missing measures go last
    gemma = sd.filter_rows(rows, "Gemma-2-2b")
    assert len(gemma) == 9 and {r["base"] for r in gemma} == {"Gemma-2-2b"}
    ties = sd.filter_rows(rows, sd.ALL_BASES, ["ties"])
    assert {r["method"] for r in ties} == {"ties"} and {r["source"] for r in ties} == {"local", "published"}
    assert {r["source"] for r in sd.filter_rows(rows, None, None, ["local"])} == {"local"}


def test_leaderboard_handler(store):
    import app

    frame, summary = app.leaderboard(store, "Llama-3.1-8B", ["ties", "dare"], [sd.PUBLISHED], "Normalized performance")
    assert list(frame["Method"]) == ["ties", "dare"] and list(frame["Norm. perf %"]) == [81.4, 78.7]
    assert "2 of" in summary
    assert frame["Model"].str.contains(r"\]\(https://github.com/uiuctml/MergeBench\)").all()
    frame, _ = app.leaderboard(store, sd.ALL_BASES, [], ["results folder"], "Merge seconds", False)
    secs = list(frame["Merge s"])
    assert secs == sorted(secs) and set(frame["Source"]) == {"results folder"}
    frame, summary = app.leaderboard(store, "no-such-base", [], ALL_SOURCES, None)
    assert frame.empty and "No merge matches" in summary
    empty = sd.Store(Path("/nonexistent/results"), use_hub=False)
    frame, summary = app.leaderboard(empty, sd.ALL_BASES, [], ["results folder"], None)
    assert frame.empty and "No results yet" in summary


# ---- compare and plots ----------------------------------------------------------------------------------------------
def test_compare_handler(store):
    import app

    status, fig, delta, configs = app.compare(store, ["local:ties"])
    assert "Pick 2 to 4" in status and isinstance(fig, Figure) and delta.empty
    status, fig, delta, configs = app.compare(store, ["local:ties", "local:soup", "published:Gemma-2-2b:ties"])
    assert status.startswith("Comparing 3 merges")
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) == 3 * len(sd.DOMAINS)
    assert list(delta.columns)[:4] == ["Measure", "ties", "soup", "Gemma-2-2b · ties"]
    assert "Δ soup vs ties" in delta.columns
    ties, soup = store.by_id(["local:ties", "local:soup"])
    merge_s = delta.set_index("Measure").loc["Merge s"]
    assert merge_s["Δ soup vs ties"] == pytest.approx(soup["merge_seconds"] - ties["merge_seconds"], abs=1e-3)
    cfg = configs.set_index("Setting")
    assert cfg.loc["method", "ties"] == "ties" and cfg.loc["parameters.density", "soup"] == ""
    assert "No results yet for Gemma-2-2b · ties" not in status  # published rows have a normalized score


def test_plots_and_empty_states(store):
    import app

    rows = store.rows()
    f1, f2, f3 = app.tradeoffs(store, sd.ALL_BASES, "Peak memory")
    for f in (f1, f2, f3):
        assert isinstance(f, Figure) and f.axes and f.axes[0].collections  # scatter points drawn
    assert f2.axes[0].get_xlabel().startswith("merge cost (peak memory")
    labels = "\n".join(t.get_text() for t in f1.axes[0].texts).splitlines()
    legend = {t.get_text() for t in f1.axes[0].get_legend().get_texts()}
    local = [r for r in rows if r["source"] == "local" and r["norm_perf"] is not None]
    assert {r["method"] for r in local} <= legend  # every method is in the legend, once
    assert len(f1.axes[0].texts) <= sp.MAX_LABELS  # a crowded plot labels its best points only
    best = max(local, key=lambda r: r["norm_perf"])
    assert any(x.startswith(best["method"]) for x in labels)
    assert "task_arithmetic (task_arithmetic_tuned)" in labels  # labeled by method, and by name when it says more
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    for fig in (f1, f2, f3):  # the labels' texts never overlap each other (their arrows aside) nor leave the axes
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        frame = fig.axes[0].get_window_extent(renderer)
        boxes = []
        for t in fig.axes[0].texts:
            t.update_positions(renderer)
            boxes.append(Text.get_window_extent(t, renderer))
        assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
        assert all(frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes), ([(b.y0, b.y1) for b in boxes], frame)
    f1, f2, f3 = app.tradeoffs(store, "Gemma-2-2b", "Merge seconds")
    assert not f1.axes[0].collections and "No merge" in f1.axes[0].texts[0].get_text()
    assert f3.axes[0].collections
    assert "No per-domain" in sp.domain_bars([]).axes[0].texts[0].get_text()
    assert "No published" in sp.published_strip([]).axes[0].texts[0].get_text()


# ---- the Hub source -------------------------------------------------------------------------------------------------
def _publish(server, repo: str, folder: Path, files: list[str], tmp: Path) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=server.token)
    api.create_repo(repo)
    stage = tmp / f"stage-{repo.replace('/', '-')}"
    stage.mkdir()
    for f in files:
        shutil.copy(folder / f, stage / f)
    (stage / "README.md").write_text("---\ntags: [merge, hfmerge]\n---\n# merged\n")
    api.upload_folder(folder_path=stage, repo_id=repo)


def test_hub_source_refresh_cache_and_offline(tmp_path):
    from hfmerge.localhub import serve

    server = serve(tmp_path / "hub")
    try:
        _publish(server, f"{server.user}/with-results", SAMPLE / "soup",
                 ["merge_report.json", "hfmerge.yaml", "results.json", "scores.json"], tmp_path)
        _publish(server, f"{server.user}/no-results", SAMPLE / "ties", ["merge_report.json", "hfmerge.yaml"],
                 tmp_path)
        hub = sd.HubSource(tmp_path / "cache", endpoint=server.url)
        assert hub.rows() == [] and "nothing cached" in hub.notice()
        notice = hub.refresh()
        assert "2 models" in notice, notice
        rows = {r["name"]: r for r in hub.rows()}
        good, bare = rows[f"{server.user}/with-results"], rows[f"{server.user}/no-results"]
        assert good["source"] == "hub" and good["method"] == "soup" and good["norm_perf"] is not None
        assert good["link"] == f"{server.url}/{server.user}/with-results"
        assert bare["status"] == "Hub repo without results" and bare["method"] == "ties"
    finally:
        server.stop()
    from huggingface_hub.utils import close_session

    close_session()  # drop kept-alive connections: the server is really gone now
    notice = hub.refresh()  # the Hub is gone: keep the cache, say so
    assert notice.startswith("Hub unreachable: no answer from") and "2 cached" in notice
    assert "Error" not in notice and "Exception" not in notice  # no class names shown to visitors
    assert len(hub.rows()) == 2
    again = sd.HubSource(tmp_path / "cache", endpoint=server.url)  # a fresh process reads the cache
    assert len(again.rows()) == 2
    store = sd.Store(SAMPLE, hub=again, use_hub=True)
    assert {r["source"] for r in store.rows()} == {"local", "hub", "published"}


# ---- the Playground backend ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def playground_family(tmp_path_factory):
    from tests.tiny import make_family

    root = tmp_path_factory.mktemp("pg")
    make_family(root, n_experts=2)
    (root / "tasks").mkdir()
    rows = {"expert1": [("two plus three equals", " five")], "expert2": [("def add(a, b):", " return a + b")],
            "general": [("the quick brown fox", " jumps over the lazy dog")]}
    for name, items in rows.items():
        (root / "tasks" / f"{name}.jsonl").write_text(
            "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in items))
    return root


def test_playground_backend_merges_and_scores(playground_family):
    import app
    from space_playground import LocalFamilyBackend

    backend = LocalFamilyBackend(playground_family)
    assert backend.with_tasks and set(backend.experts) == {"expert1", "expert2"}
    specs = backend.methods()
    assert [s.name for s in specs["ties"]][:2] == ["density", "scaling"]
    assert next(s for s in specs["consensus"] if s.name == "k").high == 2
    ref = backend.reference_points()[0]
    assert ref["forgetting"] == pytest.approx(100.0)
    status, table, fig, hist = app.playground_run(backend, "task_arithmetic", {"scaling": 0.5, "density": 0.3}, [])
    assert status.startswith("Merged with **task_arithmetic**"), status
    assert list(table["Domain"]) == ["expert1", "expert2"] and len(hist) == 1
    assert hist[0]["label"] == "task_arithmetic λ=0.5"  # the point is the table's mean normalized score
    assert hist[0]["norm_perf"] == pytest.approx(table["Normalized % (merge / expert)"].dropna().mean(), abs=0.01)
    assert isinstance(fig, Figure) and len(fig.axes[0].collections) == 2  # base + the new point
    status, *_ , hist2 = app.playground_run(backend, "ties", {"density": 0.0, "scaling": 1.0}, hist)
    assert status.startswith("**Merge failed:**") and "density" in status and hist2 == hist
    a, b = app.generate_pair(backend, "two plus", "base", "last merge", 4)
    assert isinstance(a, str) and isinstance(b, str) and not b.startswith("[")


def test_playground_time_limit_and_queue_groups(playground_family, monkeypatch):
    """A run past its deadline stops with a sentence; heavy endpoints share one concurrency group of 1, the
    table endpoints another (they never wait behind a merge)."""
    import time

    import app
    from space_playground import LocalFamilyBackend, PlaygroundError

    backend = LocalFamilyBackend(playground_family)
    with pytest.raises(PlaygroundError, match="time limit"):
        backend.merge_and_score("task_arithmetic", {"scaling": 0.5}, deadline=time.monotonic() - 1)
    monkeypatch.setattr(app, "PLAYGROUND_SECONDS", -1.0)
    status, *_ = app.playground_run(backend, "task_arithmetic", {"scaling": 0.5}, [])
    assert status.startswith("**Merge failed:** stopped: the") and "time limit" in status
    demo = app.build_app(sd.Store(SAMPLE, use_hub=False), backend, "")
    groups = {}
    for fn in demo.fns.values():
        if fn.api_name:
            groups[fn.api_name] = (fn.concurrency_id, fn.concurrency_limit)
    assert groups["playground_merge"] == groups["generate"] == (app.HEAVY, 1)
    for name in ("leaderboard", "compare", "tradeoffs", "refresh_hub"):
        assert groups[name] == (app.LIGHT, app.LIGHT_LIMIT), name
    assert "Busy, queued" not in app.announce()
    with app.HEAVY_RUNS:
        assert app.announce().startswith("**Busy, queued:**")


def test_playground_fallback_and_unavailable(tmp_path, monkeypatch):
    from space_playground import LocalFamilyBackend, default_backend

    monkeypatch.delenv("HFMERGE_PLAYGROUND", raising=False)
    backend, note = default_backend()
    assert backend is None and "HFMERGE_PLAYGROUND" in note
    monkeypatch.setenv("HFMERGE_PLAYGROUND", str(tmp_path))
    backend, note = default_backend()
    assert backend is None and "no base/" in note
    with pytest.raises(ValueError, match="no base/"):
        LocalFamilyBackend(tmp_path)


# ---- the API through gradio_client, app on 127.0.0.1 ---------------------------------------------------------------
def test_api_through_gradio_client(store, playground_family):
    import app
    from gradio_client import Client
    from space_playground import LocalFamilyBackend

    demo = app.build_app(store, LocalFamilyBackend(playground_family), "")
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, share=False, prevent_thread_lock=True,
                            quiet=True, ssr_mode=False)
    try:
        assert url.startswith("http://127.0.0.1:")
        client = Client(url, verbose=False)
        table, summary = client.predict("Gemma-2-9b-it", ["ties", "task_arithmetic"], [sd.PUBLISHED],
                                        "Normalized performance", True, api_name="/leaderboard")
        methods = [row[table["headers"].index("Method")] for row in table["data"]]
        assert methods == ["task_arithmetic", "ties"] and "2 of" in summary
        status, bars, delta, configs = client.predict(["local:ties", "local:soup"], api_name="/compare")
        assert status.startswith("Comparing 2 merges") and bars is not None
        assert delta["headers"][:3] == ["Measure", "ties", "soup"]
        assert "parameters.density" in [r[0] for r in configs["data"]]
        status, *_ = client.predict(["local:ties"], api_name="/compare")
        assert "Pick 2 to 4" in status
        result = client.predict("task_arithmetic", 0.5, 0.2, "sum", "global", 0.8, 0.2, 2, 0.1,
                                api_name="/playground_merge")
        assert result[0].startswith("Merged with **task_arithmetic**"), result[0]
        notice, *_ = client.predict(api_name="/refresh_hub")
        assert "disabled" in notice
    finally:
        demo.close()


def test_figure_cache_follows_the_data(store):
    """Figures are drawn and encoded once per (view, data version); a reload draws them again."""
    import app

    fn = app.rendered(store, app.tradeoffs)
    a = fn("All bases", "Peak memory")
    assert fn("All bases", "Peak memory") is a and fn("All bases", "Merge seconds") is not a
    assert a[0].type == "matplotlib" and "image/png" in a[0].plot[:40]
    store.reload()
    assert fn("All bases", "Peak memory") is not a


def test_views_asked_at_once_are_made_once():
    """Visitors asking at once for a view not made yet wait for the one request making it (single flight)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import app

    cache, made, gate = app._Rendered(), [], threading.Event()

    def make():
        made.append(1)
        gate.wait(5)
        return object()

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(cache.get, "view", make) for _ in range(8)]
        gate.set()
        values = {id(f.result()) for f in futures}
    assert len(made) == 1 and len(values) == 1
    with pytest.raises(ZeroDivisionError):  # a failed make leaves no gate behind: the next ask makes it again
        cache.get("other", lambda: 1 / 0)
    assert cache.get("other", lambda: 7) == 7 and not cache.gates
