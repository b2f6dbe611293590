"""Data of the hfmerge Space: merges from a results folder, from the Hub (tag ``hfmerge``) and MergeBench's
published Table 7, as one list of *rows* (plain dicts), plus the leaderboard's filters and sorts.

Units shown everywhere: normalized performance and forgetting in % (MergeBench's ratios × 100; forgetting is
merge / base on the forgetting tasks, so 100 % = nothing forgotten), per-domain scores in % (the metric that
counts, × 100), gain over the best expert in points (mean domain score difference × 100), merge time in
seconds, peak memory in GiB.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
SAMPLE_RESULTS = HERE / "sample_results"
DOMAINS = ("instruction", "math", "coding", "multilingual", "safety")
PUBLISHED = "published (MergeBench paper)"
SOURCES = {"local": "results folder", "hub": "Hub", "published": PUBLISHED}
MERGEBENCH_URL = "https://github.com/uiuctml/MergeBench"
ALL_BASES = "All bases"

# MergeBench (He et al., 2025) Table 7: normalized multi-task performance (%), per base × method.
TABLE7_METHODS = ("fisher", "dare", "soup", "ties", "regmean", "task_arithmetic", "consensus",
                  "localize_stitch", "localize_stitch (trained)")
TABLE7 = {
    "Gemma-2-2b": (68.4, 66.1, 66.4, 61.7, 76.9, 70.3, 74.7, 76.1, 76.8),
    "Gemma-2-2b-it": (88.8, 84.3, 89.9, 87.0, 91.6, 89.9, 90.5, 90.6, 90.4),
    "Llama-3.2-3B": (61.8, 69.4, 57.0, 63.0, 80.7, 72.9, 75.5, 68.3, 74.6),
    "Llama-3.2-3B-Instruct": (92.1, 95.9, 94.4, 98.6, 97.6, 93.9, 91.6, 95.9, 96.1),
    "Gemma-2-9b": (89.4, 89.6, 89.4, 92.1, 89.3, 91.1, 87.2, 91.2, 92.7),
    "Gemma-2-9b-it": (98.1, 91.8, 98.3, 101.1, 88.2, 104.6, 106.5, 105.0, 100.1),
    "Llama-3.1-8B": (80.3, 78.7, 81.1, 81.4, 80.6, 84.8, 83.5, 90.6, 91.7),
    "Llama-3.1-8B-Instruct": (85.4, 88.8, 88.6, 93.7, 90.4, 90.0, 91.1, 95.2, 95.1),
    "Overall (mean of 8 bases)": (83.0, 83.1, 83.1, 84.8, 86.9, 87.2, 87.6, 89.1, 89.7),
}
TABLE7_BASE_IDS = {
    "Gemma-2-2b": "google/gemma-2-2b", "Gemma-2-2b-it": "google/gemma-2-2b-it",
    "Llama-3.2-3B": "meta-llama/Llama-3.2-3B", "Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "Gemma-2-9b": "google/gemma-2-9b", "Gemma-2-9b-it": "google/gemma-2-9b-it",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B", "Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct",
}

# Leaderboard columns: key in a row -> header. Domain columns are added after "gain".
MEASURES = {
    "norm_perf": "Norm. perf %",
    "forgetting": "Forgetting %",
    "beats_base": "Beats base",
    "gain": "Gain vs best expert",
}
COSTS = {"merge_seconds": "Merge s", "peak_gib": "Peak mem GiB"}


# ---- reading one merge ------------------------------------------------------------------------------------------
def _read_json(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path.name} unreadable ({e.__class__.__name__})"
    return (data, None) if isinstance(data, dict) else (None, f"{path.name} is not a JSON object")


def _read_yaml(path: Path) -> tuple[dict | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        return None, f"{path.name} unreadable ({e.__class__.__name__})"
    return (data, None) if isinstance(data, dict) else (None, f"{path.name} is not a mapping")


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _pct(v) -> float | None:
    v = _num(v)
    return None if v is None else round(100.0 * v, 2)


def method_label(method: str | None, parameters: dict | None) -> str:
    """The method as shown and filtered: Localize-and-Stitch's trained variant is its own entry (as in Table 7)."""
    if not method:
        return "unknown"
    if method == "localize_stitch" and (parameters or {}).get("variant") == "trained":
        return "localize_stitch (trained)"
    return method


def short_base(ref: str | None) -> str:
    """``org/name@rev`` or a local path -> ``name`` (what the base filter shows)."""
    if not ref:
        return "unknown"
    ref = str(ref).split("@")[0].rstrip("/")
    return ref.rsplit("/", 1)[-1]


def params_text(parameters: dict | None) -> str:
    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in (parameters or {}).items() if v is not None) or "-"


def domain_scores_from_tasks(tasks: dict | None) -> dict[str, float]:
    """Per-domain scores from a lighteval summary when no scores.json gives them: a task counts for a domain
    when the domain's name is part of the task's name (``mini_math_test|0`` -> math); its first metric counts."""
    out: dict[str, list[float]] = {}
    for key, metrics in (tasks or {}).items():
        name = key.split("|")[0].lower()
        if not isinstance(metrics, dict):
            continue
        values = [_num(metrics[m]) for m in sorted(metrics) if not m.endswith("_stderr")]
        values = [v for v in values if v is not None]
        for d in DOMAINS:
            if d in name and values:
                out.setdefault(d, []).append(values[0])
    return {d: sum(v) / len(v) for d, v in out.items()}


def scores_of(scores: dict | None, results: dict | None, name: str) -> dict | None:
    """The measures of one merge: ``scores.json`` (one merge's measures, or ``hfmerge report -o``'s mapping
    name -> measures) first, else the measures the demo folds into ``results.json``; None when neither has them."""
    if scores and "normalized" not in scores and "domains" not in scores:
        inner = scores.get(name) if isinstance(scores.get(name), dict) else None
        if inner is None and len(scores) == 1 and isinstance(next(iter(scores.values())), dict):
            inner = next(iter(scores.values()))
        scores = inner
    if scores:
        return scores
    if results and any(k in results for k in ("normalized", "forgetting", "beats_base")):
        return {k: results.get(k) for k in ("normalized", "forgetting", "beats_base", "gain_over_best_expert")}
    return None


def make_row(name: str, source: str, report: dict | None, config: dict | None, results: dict | None,
             scores: dict | None, link: str | None = None, problems: list[str] | None = None) -> dict:
    """One leaderboard row from the files of one merge (any of them may be None)."""
    report, config = report or {}, config or {}
    method = report.get("method") or config.get("method")
    parameters = report.get("parameters") if isinstance(report.get("parameters"), dict) else config.get("parameters")
    base_ref = config.get("base_model") or next(
        (s.get("ref") for s in report.get("sources") or [] if isinstance(s, dict) and s.get("role") == "base"), None)
    measures = scores_of(scores, results, name) or {}
    normalized = measures.get("normalized") if isinstance(measures.get("normalized"), dict) else {}
    domains = measures.get("domains") if isinstance(measures.get("domains"), dict) else None
    if domains is None and results:
        domains = domain_scores_from_tasks(results.get("tasks"))
    peak = _num(report.get("peak_rss_bytes") or measures.get("peak_rss_bytes"))
    status = "ok"
    if not results and not measures:
        status = "no results yet"
    elif not normalized:
        status = "evaluated, no normalized scores"
    link = link or measures.get("hub_url") or None
    row = {
        "id": f"{source}:{name}", "name": name, "source": source, "base": short_base(base_ref), "base_ref": base_ref,
        "method": method_label(method, parameters), "parameters": parameters or {},
        "params": params_text(parameters), "norm_perf": _pct(normalized.get("mean")),
        "normalized": {k: v for k, v in normalized.items() if k != "mean"},
        "forgetting": _pct(measures.get("forgetting")), "beats_base": measures.get("beats_base"),
        "gain": _pct(measures.get("gain_over_best_expert")),
        "domains": {d: _pct(v) for d, v in (domains or {}).items() if _pct(v) is not None},
        "merge_seconds": _num(report.get("merge_seconds") or measures.get("merge_seconds")),
        "peak_gib": None if peak is None else round(peak / 2**30, 3),
        "link": link, "status": status, "problems": list(problems or []),
        "config": config, "report": report, "n_experts": sum(
            1 for s in report.get("sources") or [] if isinstance(s, dict) and s.get("role") == "expert")
        or len(config.get("models") or []),
    }
    if row["beats_base"] not in (True, False):
        row["beats_base"] = None
    return row


def load_folder(folder: Path, source: str = "local") -> dict | None:
    """One merge folder -> row; None when it holds none of the merge files."""
    report, p1 = _read_json(folder / "merge_report.json")
    config, p2 = _read_yaml(folder / "hfmerge.yaml")
    results, p3 = _read_json(folder / "results.json")
    if results is None and p3 is None:  # a pulled model repo: its .eval_results/*.yaml and card model-index
        from hfmerge.eval_results import read_results

        results = read_results(folder)
    scores, p4 = _read_json(folder / "scores.json")
    problems = [p for p in (p1, p2, p3, p4) if p]
    if report is None and config is None and results is None and scores is None and not problems:
        return None
    if report is None and config is None:
        problems.append("no merge_report.json / hfmerge.yaml")
    return make_row(folder.name, source, report, config, results, scores, problems=problems)


DEPLOYED_RESULTS = HERE / "results"  # what `hfmerge space deploy` ships


def results_dir() -> Path:
    """HFMERGE_RESULTS, else the deployed results/ beside the app, else the bundled sample."""
    env = os.environ.get("HFMERGE_RESULTS")
    if env:
        return Path(env).expanduser()
    return DEPLOYED_RESULTS if DEPLOYED_RESULTS.is_dir() else SAMPLE_RESULTS


def _merge_folders(root: Path) -> list[Path]:
    return [d for d in sorted(root.iterdir()) if d.is_dir() and any((d / f).is_file() for f in HUB_FILES)]


def resolve_results(root: Path) -> Path:
    """A `hfmerge demo` work folder (``demo_out``) holds its merges in ``results/``: use that."""
    if root.is_dir() and not _merge_folders(root) and (root / "results").is_dir():
        return root / "results"
    return root


def load_results_folder(path: str | Path | None = None) -> tuple[list[dict], str]:
    """Rows of every merge sub-folder of ``path`` (default: :func:`results_dir`) and a notice for the page
    ("" when all is well)."""
    root = resolve_results(Path(path).expanduser() if path else results_dir())
    if not root.is_dir():
        return [], (f"Results folder `{root}` does not exist: set HFMERGE_RESULTS to a folder written by "
                    "`hfmerge demo` (demo_out) or `hfmerge eval`.")
    rows = [r for d in sorted(root.iterdir()) if d.is_dir() and (r := load_folder(d)) is not None]
    if not rows:
        return [], (f"No merges in `{root}` yet: it needs one sub-folder per merge with merge_report.json "
                    "(as `hfmerge demo` writes in demo_out/results).")
    return rows, ""


def published_rows() -> list[dict]:
    """MergeBench's Table 7 as rows (only the normalized performance is published per base × method)."""
    rows = []
    for base, values in TABLE7.items():
        for method, value in zip(TABLE7_METHODS, values, strict=True):
            rows.append({
                "id": f"published:{base}:{method}", "name": f"{base} · {method}", "source": "published",
                "base": base, "base_ref": TABLE7_BASE_IDS.get(base), "method": method, "parameters": {},
                "params": "tuned (paper)", "norm_perf": value, "normalized": {}, "forgetting": None,
                "beats_base": None, "gain": None, "domains": {}, "merge_seconds": None, "peak_gib": None,
                "link": MERGEBENCH_URL, "status": PUBLISHED, "problems": [], "config": {}, "report": {},
                "n_experts": 5,
            })
    return rows


# ---- the Hub: models tagged hfmerge, cached on disk -----------------------------------------------------------
HUB_FILES = ("merge_report.json", "hfmerge.yaml", "results.json", "scores.json")


def hub_enabled() -> bool:
    return os.environ.get("HFMERGE_HUB", "on").lower() not in ("0", "off", "false", "no")


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_problem(e: BaseException, endpoint: str) -> str:
    """What went wrong with the Hub, said so a visitor (or the Space's owner) can act on it."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(e, OfflineModeIsEnabled) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "Hub unreachable: offline mode is on (HF_HUB_OFFLINE); unset it to list Hub models."
    if isinstance(e, HfHubHTTPError) and e.response is not None:
        status = e.response.status_code
        if status in (401, 403):
            return f"Hub unreachable: {endpoint} refused the token (HTTP {status}); fix HF_TOKEN or remove it."
        if status == 429:
            return "Hub unreachable: rate limited by the Hub; press Refresh Hub again in a minute."
        return f"Hub unreachable: {endpoint} answered HTTP {status}; press Refresh Hub to try again later."
    return f"Hub unreachable: no answer from {endpoint} (offline?); press Refresh Hub to try again."


_REFRESHING = threading.Lock()


class HubSource:
    """Merged models on the Hub found by tag, with their merge files; kept in a JSON cache so the Space works
    offline with what it last saw. ``refresh()`` never raises: on any error the cache stays and a notice says so."""

    def __init__(self, cache_dir: str | Path | None = None, endpoint: str | None = None, tag: str = "hfmerge"):
        self.endpoint = (endpoint or hub_endpoint()).rstrip("/")
        self.tag = tag
        root = Path(cache_dir or os.environ.get("HFMERGE_SPACE_CACHE") or Path.home() / ".cache" / "hfmerge-space")
        key = hashlib.sha1(f"{self.endpoint} {tag}".encode()).hexdigest()[:12]
        self.cache_dir = root
        self.cache_file = root / f"hub-{key}.json"

    def _load(self) -> dict:
        try:
            data = json.loads(self.cache_file.read_text())
            return data if isinstance(data, dict) and isinstance(data.get("models"), dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self, data: dict) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.cache_file)

    def age_seconds(self) -> float | None:
        fetched = self._load().get("fetched_at")
        return None if fetched is None else time.time() - fetched

    def rows(self) -> list[dict]:
        out = []
        for repo_id, entry in sorted(self._load().get("models", {}).items()):
            files = entry.get("files") or {}
            row = make_row(repo_id, "hub", files.get("merge_report.json"), files.get("hfmerge.yaml"),
                           files.get("results.json"), files.get("scores.json"), link=f"{self.endpoint}/{repo_id}")
            if not files.get("results.json") and not files.get("scores.json"):
                row["status"] = "Hub repo without results"
            out.append(row)
        return out

    def notice(self) -> str:
        data = self._load()
        if not data:
            return "Hub: nothing cached yet (press Refresh)."
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(data.get("fetched_at", 0)))
        return f"Hub: {len(data['models'])} models tagged `{self.tag}` (as of {when})."

    def refresh(self) -> str:
        """Fetch the list and the files of changed repos; return a one-line notice (one refresh at a time)."""
        with _REFRESHING:
            return self._refresh()

    def _refresh(self) -> str:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        old = self._load().get("models", {})
        try:
            api = HfApi(endpoint=self.endpoint)
            listed = list(api.list_models(filter=self.tag, limit=1000))
            models = {}
            for m in listed:
                sha = getattr(m, "sha", None)
                if sha and old.get(m.id, {}).get("sha") == sha:
                    models[m.id] = old[m.id]
                    continue
                info = api.model_info(m.id, revision=sha)
                present = {s.rfilename for s in info.siblings or []}
                sha = sha or info.sha
                files = {}
                for fname in HUB_FILES:
                    if fname not in present:
                        files[fname] = None
                        continue
                    try:
                        local = hf_hub_download(m.id, fname, revision=sha, endpoint=self.endpoint,
                                                cache_dir=str(self.cache_dir / "hf"))
                    except EntryNotFoundError:
                        files[fname] = None
                        continue
                    text = Path(local).read_text()
                    try:
                        files[fname] = yaml.safe_load(text) if fname.endswith(".yaml") else json.loads(text)
                    except (ValueError, yaml.YAMLError):
                        files[fname] = None
                if files.get("results.json") is None:  # scores published as .eval_results / model-index only
                    from hfmerge.eval_results import read_repo_results

                    files["results.json"] = read_repo_results(m.id, sha, self.endpoint, str(self.cache_dir / "hf"))
                models[m.id] = {"sha": sha, "files": files}
        except Exception as e:  # noqa: BLE001 - any network/Hub error: keep the cache, say what to do
            kept = len(old)
            return f"{hub_problem(e, self.endpoint)} Showing {kept} cached model{'s' if kept != 1 else ''}."
        self._save({"fetched_at": time.time(), "endpoint": self.endpoint, "models": models})
        return self.notice()


# ---- all rows, filters, sorts ------------------------------------------------------------------------------------
def domains_of(rows: list[dict]) -> list[str]:
    seen = {d for r in rows for d in r["domains"]}
    return [d for d in DOMAINS if d in seen] + sorted(seen - set(DOMAINS))


def sort_options(rows: list[dict]) -> dict[str, str]:
    """Sort label -> row key (domain columns are ``domain:<name>``)."""
    opts = {"Normalized performance": "norm_perf"}
    opts.update({f"Score: {d}": f"domain:{d}" for d in domains_of(rows)})
    opts.update({"Forgetting (retained, %)": "forgetting", "Beats base": "beats_base",
                 "Gain over best expert": "gain", "Merge seconds": "merge_seconds", "Peak memory": "peak_gib"})
    return opts


def _value(row: dict, key: str):
    if key.startswith("domain:"):
        return row["domains"].get(key[7:])
    v = row.get(key)
    return float(v) if isinstance(v, bool) else v


def filter_rows(rows: list[dict], base: str | None = None, methods: list[str] | None = None,
                sources: list[str] | None = None) -> list[dict]:
    out = rows
    if base and base != ALL_BASES:
        out = [r for r in out if r["base"] == base]
    if methods:
        out = [r for r in out if r["method"] in methods]
    if sources is not None:
        out = [r for r in out if r["source"] in sources]
    return out


def sort_rows(rows: list[dict], key: str = "norm_perf", descending: bool = True) -> list[dict]:
    """Sorted by ``key``; rows without that measure always go last."""
    have = [r for r in rows if _value(r, key) is not None]
    missing = [r for r in rows if _value(r, key) is None]
    return sorted(have, key=lambda r: _value(r, key), reverse=descending) + missing


def _link_md(row: dict) -> str:
    name = row["name"].replace("|", "/")
    return f"[{name}]({row['link']})" if row.get("link") else name


def leaderboard_frame(rows: list[dict], all_rows: list[dict] | None = None) -> pd.DataFrame:
    """The table shown: one line per merge, numbers rounded, missing values blank."""
    domains = domains_of(all_rows if all_rows is not None else rows)
    cols = ["Model", "Source", "Base", "Method", "Parameters", *MEASURES.values(), *domains, *COSTS.values(),
            "Status"]
    data = []
    for r in rows:
        beats = {True: "yes", False: "no"}.get(r["beats_base"], "")
        line = [_link_md(r), SOURCES.get(r["source"], r["source"]), r["base"], r["method"], r["params"],
                r["norm_perf"], r["forgetting"], beats, r["gain"], *[r["domains"].get(d) for d in domains],
                r["merge_seconds"], r["peak_gib"], r["status"]]
        data.append(line)
    return pd.DataFrame(data, columns=cols)


class Store:
    """Every row the Space shows: results folder + Hub cache + published figures; reloadable."""

    def __init__(self, results: str | Path | None = None, hub: HubSource | None = None, use_hub: bool | None = None):
        self.results = results
        self.use_hub = hub_enabled() if use_hub is None else use_hub
        self.hub = hub if hub is not None else (HubSource() if self.use_hub else None)
        self.local: list[dict] = []
        self.notices: dict[str, str] = {}
        self.reload()

    def reload(self) -> None:
        self.local, self.notices["local"] = load_results_folder(self.results)
        self.generation = getattr(self, "generation", 0) + 1
        if self.hub is not None:
            self.notices.setdefault("hub", self.hub.notice())

    def version(self) -> tuple:
        """Changes whenever the rows may have: a reload, a new Hub cache."""
        hub = None
        if self.hub is not None:
            try:
                hub = self.hub.cache_file.stat().st_mtime_ns
            except OSError:
                hub = 0
        return self.generation, hub

    def refresh_hub(self) -> str:
        if self.hub is None:
            self.notices["hub"] = "Hub source disabled (HFMERGE_HUB=off)."
        else:
            self.notices["hub"] = self.hub.refresh()
        return self.notices["hub"]

    def rows(self, published: bool = True) -> list[dict]:
        hub = self.hub.rows() if self.hub is not None else []
        return self.local + hub + (published_rows() if published else [])

    def merges(self) -> list[dict]:
        """Rows one can compare (ours and the Hub's, not the published aggregates)."""
        return [r for r in self.rows(published=False)]

    def by_id(self, ids: list[str]) -> list[dict]:
        index = {r["id"]: r for r in self.rows()}
        return [index[i] for i in ids if i in index]

    def notice(self) -> str:
        parts = [n for n in (self.notices.get("local"), self.notices.get("hub")) if n]
        return " ".join(parts)


def bases_of(rows: list[dict]) -> list[str]:
    return [ALL_BASES] + sorted({r["base"] for r in rows}, key=str.lower)


def methods_of(rows: list[dict]) -> list[str]:
    return sorted({r["method"] for r in rows})


# ---- compare -----------------------------------------------------------------------------------------------------
def compare_frame(rows: list[dict]) -> pd.DataFrame:
    """Measures (lines) × merges (columns), plus "Δ <merge> vs <first>" columns for the others."""
    domains = domains_of(rows)
    measures = [("Norm. perf %", lambda r: r["norm_perf"])]
    measures += [(f"{d} %", lambda r, d=d: r["domains"].get(d)) for d in domains]
    measures += [("Forgetting %", lambda r: r["forgetting"]), ("Gain vs best expert", lambda r: r["gain"]),
                 ("Beats base", lambda r: None if r["beats_base"] is None else float(r["beats_base"])),
                 ("Merge s", lambda r: r["merge_seconds"]), ("Peak mem GiB", lambda r: r["peak_gib"])]
    names = _unique_names(rows)
    data = {"Measure": [m for m, _ in measures]}
    for name, r in zip(names, rows, strict=True):
        data[name] = [f(r) for _, f in measures]
    first = rows[0] if rows else None
    for name, r in list(zip(names, rows, strict=True))[1:]:
        deltas = []
        for _, f in measures:
            a, b = f(r), f(first)
            deltas.append(None if a is None or b is None else round(a - b, 3))
        data[f"Δ {name} vs {names[0]}"] = deltas
    return pd.DataFrame(data)


def config_frame(rows: list[dict]) -> pd.DataFrame:
    """Configs side by side: method, base, experts, every parameter any of them has, dtype, seed, skip."""
    names = _unique_names(rows)
    keys = []
    for r in rows:
        for k in r["parameters"]:
            if k not in keys:
                keys.append(k)

    def experts(r):
        models = r["config"].get("models") or []
        refs = [m.get("model") if isinstance(m, dict) else m for m in models]
        return ", ".join(short_base(x) for x in refs if x) or (str(r["n_experts"]) if r["n_experts"] else "")

    lines = [("method", lambda r: r["method"]), ("base", lambda r: r["base_ref"] or r["base"]),
             ("experts", experts)]
    lines += [(f"parameters.{k}", lambda r, k=k: r["parameters"].get(k)) for k in keys]
    lines += [("dtype", lambda r: r["config"].get("dtype") or r["report"].get("dtype")),
              ("seed", lambda r: r["config"].get("seed")),
              ("skip", lambda r: ", ".join(r["config"].get("skip") or [])),
              ("hfmerge", lambda r: r["report"].get("hfmerge_version")),
              ("source", lambda r: SOURCES.get(r["source"], r["source"]))]
    data = {"Setting": [k for k, _ in lines]}
    for name, r in zip(names, rows, strict=True):
        data[name] = ["" if (v := f(r)) is None else str(v) for _, f in lines]
    return pd.DataFrame(data)


def _unique_names(rows: list[dict]) -> list[str]:
    names, seen = [], set()
    for r in rows:
        n = r["name"]
        if n in seen:
            n = f"{r['name']} ({SOURCES.get(r['source'], r['source'])})"
        seen.add(n)
        names.append(n)
    return names
