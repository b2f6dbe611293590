"""The Space as a visitor meets it: deployed with `hfmerge space deploy` to the loopback Hub, downloaded into an
empty folder, run by a venv built from nothing but its requirements.txt. Shared by test_space_deploy and
test_space_browser (one deploy and one app process per test session).

The venv is built once and kept in ~/.cache/hfmerge/space-venv-<hash of requirements.txt without the wheel line,
hfmerge's own dependencies and the Python version> (HFMERGE_SPACE_VENV overrides the folder): a build takes
minutes (torch, gradio, transformers); each session then reinstalls the freshly deployed hfmerge wheel into it
with --no-deps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SPACE = Path(__file__).resolve().parents[1] / "space"
VENV_ROOT = Path(os.environ.get("HFMERGE_SPACE_VENV_CACHE") or Path.home() / ".cache" / "hfmerge")


@dataclass
class Deployed:
    repo: str
    commit_url: str
    folder: Path  # the Space repo downloaded into an empty folder
    venv: Path
    url: str  # the running app
    proc: subprocess.Popen
    hub_url: str
    deploy_output: str
    venv_seconds: float  # 0 when the cached venv was reused (then: wheel reinstall seconds in wheel_seconds)
    wheel_seconds: float
    start_seconds: float
    timings: dict = field(default_factory=dict)


_STATE: dict = {}


def _family(root: Path) -> Path:
    """A tiny Llama family laid out as `hfmerge demo` does: base/, expert-<domain>/, tasks/<domain>.jsonl."""
    from tests.tiny import make_family

    make_family(root, n_experts=2)
    for i, name in ((1, "math"), (2, "coding")):
        shutil.move(root / f"expert{i}", root / f"expert-{name}")
    (root / "tasks").mkdir()
    rows = {"math": ("two plus three equals", " five"), "coding": ("def add(a, b):", " return a + b"),
            "general": ("the quick brown fox", " jumps over the lazy dog")}
    for name, (p, c) in rows.items():
        (root / "tasks" / f"{name}.jsonl").write_text(json.dumps({"prompt": p, "completion": c}) + "\n")
    return root


def _demo_out(root: Path, hub_url: str) -> Path:
    """A `hfmerge demo`-shaped work folder: results/<merge>/ (the bundled sample) + a family in mini-llama/."""
    results = root / "results"
    for d in sorted(p for p in (SPACE / "sample_results").iterdir() if p.is_dir()):
        shutil.copytree(d, results / d.name)
    scores = results / "ties" / "scores.json"
    data = json.loads(scores.read_text())
    data["hub_url"] = f"{hub_url}/hfmerge-user/mini-ties"  # the demo links its loopback Hub: must not ship
    scores.write_text(json.dumps(data))
    _family(root / "mini-llama")
    return root


def _publish_tagged(server, tmp: Path) -> str:
    """One merged model on the Hub tagged hfmerge, with results: the Space lists it online."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=server.url, token=server.token)
    repo = f"{server.user}/community-soup"
    api.create_repo(repo, exist_ok=True)
    stage = tmp / "community"
    stage.mkdir()
    for f in ("merge_report.json", "hfmerge.yaml", "results.json", "scores.json"):
        shutil.copy(SPACE / "sample_results" / "soup" / f, stage / f)
    (stage / "README.md").write_text("---\ntags: [merge, hfmerge]\n---\n# a community merge\n")
    api.upload_folder(folder_path=stage, repo_id=repo)
    return repo


def _wheel_requires(wheel: Path) -> list[str]:
    """hfmerge's own dependencies (Requires-Dist without extras), from the wheel's METADATA."""
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return sorted(ln for ln in lines if ln.startswith("Requires-Dist:") and "extra ==" not in ln)


def _requirements_key(req: Path, extra: list[str] | None = None) -> str:
    """Changes with the requirements (not the wheel's name), hfmerge's own dependencies and the Python."""
    lines = [ln.strip() for ln in req.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    kept = [ln for ln in lines if not ln.startswith("./wheels/")] + list(extra or [])
    return hashlib.sha256(("\n".join(kept) + sys.version).encode()).hexdigest()[:16]


def build_venv(folder: Path) -> tuple[Path, float, float]:
    """(venv, seconds to build it or 0 when cached, seconds to install this deploy's wheel)."""
    req = folder / "requirements.txt"
    wheel = next((folder / "wheels").glob("hfmerge-*.whl"))
    key = _requirements_key(req, _wheel_requires(wheel))
    venv = Path(os.environ.get("HFMERGE_SPACE_VENV") or VENV_ROOT / f"space-venv-{key}")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    built = 0.0
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run([*pip, "-r", "requirements.txt"], cwd=folder, capture_output=True, text=True)
        if proc.returncode:
            pytest.fail(f"pip install -r requirements.txt of the deployed Space failed:\n{proc.stderr[-3000:]}")
        built = time.perf_counter() - t0
        (venv / ".complete").write_text(f"{built:.0f} s\n")
    t1 = time.perf_counter()
    proc = subprocess.run([*pip, "--no-deps", "--force-reinstall", str(wheel)], cwd=folder, capture_output=True,
                          text=True)
    if proc.returncode:
        pytest.fail(f"installing the deployed hfmerge wheel failed:\n{proc.stderr[-3000:]}")
    return venv, built, time.perf_counter() - t1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(folder: Path, venv: Path, hub_url: str, cache: Path) -> tuple[subprocess.Popen, str, float]:
    """`python app.py` in the downloaded Space, its own files only (no HFMERGE_RESULTS / HFMERGE_PLAYGROUND)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HFMERGE_", "HF_", "GRADIO_", "PYTHON"))}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               HF_ENDPOINT=hub_url, HFMERGE_SPACE_CACHE=str(cache), HF_HOME=str(cache / "hf_home"),
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), MPLCONFIGDIR=str(cache / "mpl"))
    log = open(cache / "app.log", "w")  # noqa: SIM115 - kept open for the process's life
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(venv / "bin" / "python"), "app.py"], cwd=folder, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - t0 < 180:
        if proc.poll() is not None:
            pytest.fail(f"the deployed app exited ({proc.returncode}):\n{(cache / 'app.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"the deployed app did not answer within 180 s:\n{(cache / 'app.log').read_text()[-3000:]}")


@contextmanager
def _pointed_at(server):
    """huggingface_hub (constants and environment) pointed at ``server`` for the block, then restored."""
    from huggingface_hub import constants

    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE)
    saved_env = {k: os.environ.get(k) for k in ("HF_TOKEN", "HF_ENDPOINT")}
    constants.ENDPOINT = server.url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = server.url + "/{repo_id}/resolve/{revision}/{filename}"
    os.environ.update(HF_TOKEN=server.token, HF_ENDPOINT=server.url)
    try:
        yield server
    finally:
        constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def deployed_space(local_hub, tmp_path_factory):
    """Deploy (through the CLI), download into an empty folder, build the venv, run the app; shared. The Space
    lives on a loopback Hub of its own, so what it lists online (models tagged hfmerge) is exactly what this
    fixture publishes, whatever other tests pushed to the session's Hub."""
    if "space" in _STATE:
        yield _STATE["space"]
        return
    from huggingface_hub import snapshot_download
    from typer.testing import CliRunner

    from hfmerge.cli import app as cli
    from hfmerge.localhub import serve

    tmp = tmp_path_factory.mktemp("space-deploy")
    hub = serve(tmp / "hub", user=local_hub.user, token=local_hub.token)
    with _pointed_at(hub):
        _publish_tagged(hub, tmp)
        demo_out = _demo_out(tmp / "demo_out", hub.url)
        repo = f"{hub.user}/hfmerge-space"
        t0 = time.perf_counter()
        res = CliRunner().invoke(cli, ["space", "deploy", "--repo", repo, "--results", str(demo_out)])
        deploy_seconds = time.perf_counter() - t0
        assert res.exit_code == 0, res.output
        folder = tmp / "downloaded"
        folder.mkdir()
        snapshot_download(repo, repo_type="space", local_dir=folder)
    commit_url = res.output.strip().splitlines()[-1].rsplit(": ", 1)[-1]
    venv, built, wheel_s = build_venv(folder)
    cache = tmp / "app-cache"
    cache.mkdir()
    proc, url, start_s = start_app(folder, venv, hub.url, cache)
    space = Deployed(repo, commit_url, folder, venv, url, proc, hub.url, res.output, built, wheel_s, start_s,
                     {"deploy_seconds": deploy_seconds})
    _STATE["space"] = space
    print(f"\n[space] deploy {deploy_seconds:.1f} s, venv build {built:.0f} s (0 = cached), wheel install "
          f"{wheel_s:.1f} s, app start {start_s:.1f} s")
    try:
        yield space
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        hub.stop()
        _STATE.pop("space", None)
