"""Put the hfmerge Space on the Hub: one ``create_commit`` holding everything it needs to run from its own files.

What the Space repo gets (paths in the repo):

    README.md                 Spaces front matter: sdk gradio, sdk_version = the pinned gradio, app_file app.py,
                              python_version of this interpreter; then the body of space/README.md
    app.py space_*.py         the app (space/*.py of this checkout)
    requirements.txt          torch (CPU wheel first), gradio and what the app imports, and hfmerge itself as
                              ``./wheels/hfmerge-<version>-py3-none-any.whl`` (relative to the repo root)
    wheels/hfmerge-*.whl      a wheel built from this checkout
    results/<merge>/          the merge files of every --results folder (merge_report.json, hfmerge.yaml,
                              results.json, scores.json, .eval_results/*.yaml; never weights)
    playground/               a small model family (base/, expert-*/, task rows) for the Playground, if given
    screenshots/*.png         the pictures the README shows

The app reads ``results/`` and ``playground/`` next to itself when the HFMERGE_* variables are unset. The token
is never printed or written: every staged file is checked for it before anything is sent.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hfmerge.errors import HfMergeError

APP_FILES = ("app.py", "space_data.py", "space_playground.py", "space_plots.py")
MERGE_FILES = ("merge_report.json", "hfmerge.yaml", "results.json", "scores.json")
# what app.py imports besides hfmerge (which brings torch, transformers, safetensors, huggingface-hub, pyyaml)
APP_REQUIREMENTS = ("gradio", "matplotlib", "pandas", "pyyaml", "huggingface-hub")
TORCH = "torch==2.13.0"
# A Playground family must merge and score in seconds on free CPU hardware (2 vCPU, 16 GB): bounded by the
# bytes of its weights (the app holds base + experts + one merge in fp32).
PLAYGROUND_MAX_BYTES = 256 * 2**20
PLAYGROUND_MAX_EXPERTS = 5
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
               "chat_template.jinja")
LOOPBACK = re.compile(r"^https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)")


@dataclass
class SpaceBundle:
    """The files of the Space: repo path -> bytes, or a local file to upload as is."""

    files: dict[str, bytes | Path] = field(default_factory=dict)
    merges: list[str] = field(default_factory=list)
    playground: str | None = None

    def add(self, path: str, content: bytes | Path) -> None:
        self.files[path] = content

    def size(self) -> int:
        return sum(len(c) if isinstance(c, bytes) else c.stat().st_size for c in self.files.values())


# ---- where things come from ---------------------------------------------------------------------------------
def checkout_root() -> Path:
    """The source checkout this hfmerge runs from (pyproject.toml and space/ next to the package)."""
    root = Path(__file__).resolve().parents[1]
    if not ((root / "pyproject.toml").is_file() and (root / "space" / "app.py").is_file()):
        raise HfMergeError(f"`hfmerge space deploy` needs a source checkout of hfmerge (pyproject.toml and "
                           f"space/app.py next to the package, not found in {root}): run it from a clone "
                           "installed with `pip install -e .`")
    return root


def pinned(root: Path, name: str) -> str:
    """The version constraints.txt pins for ``name`` (else the installed one)."""
    want = re.sub(r"[-_.]+", "-", name).lower()
    cons = root / "constraints.txt"
    if cons.is_file():
        for line in cons.read_text().splitlines():
            pkg, sep, version = line.strip().partition("==")
            if sep and re.sub(r"[-_.]+", "-", pkg).lower() == want:
                return version.strip()
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        raise HfMergeError(f"cannot tell which {name} to pin: not in constraints.txt and not installed") from None


def build_wheel(root: Path, out: Path) -> Path:
    """A wheel of this checkout, built in a copy (the checkout is left untouched)."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (root / name).is_file():
            shutil.copy(root / name, src / name)
    shutil.copytree(root / "hfmerge", src / "hfmerge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(out.glob("hfmerge-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HfMergeError(f"building the hfmerge wheel failed ({last}); is setuptools installed in this venv?")
    return wheels[0]


def results_folders(folder: Path) -> Path:
    """``demo_out`` (a demo work folder) -> ``demo_out/results``; a results folder is returned as is."""
    if not folder.is_dir():
        raise HfMergeError(f"--results {folder} is not a folder")
    if not _merge_dirs(folder) and (folder / "results").is_dir():
        return folder / "results"
    return folder


def _merge_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and any((d / f).is_file() for f in MERGE_FILES[:2]))


def find_family(folders: list[Path]) -> Path | None:
    """A Playground family beside the results: ``demo_out/mini-*`` (what ``hfmerge demo`` builds)."""
    for f in folders:
        for root in (f, f.parent):
            for cand in sorted(root.glob("mini-*")):
                if (cand / "base" / "config.json").is_file():
                    return cand
    return None


# ---- the bundle ----------------------------------------------------------------------------------------------
def _clean_scores(data: bytes) -> bytes:
    """Drop links to a loopback Hub (``hfmerge demo`` pushes to 127.0.0.1: dead links on a public Space)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return data
    if isinstance(obj, dict) and isinstance(obj.get("hub_url"), str) and LOOPBACK.match(obj["hub_url"]):
        obj.pop("hub_url")
        return (json.dumps(obj, indent=2) + "\n").encode()
    return data


def add_results(bundle: SpaceBundle, folders: list[Path]) -> None:
    """Every merge sub-folder of each results folder under ``results/``; same names get the folder's name."""
    for folder in folders:
        for d in _merge_dirs(folder):
            name = d.name if d.name not in bundle.merges else f"{folder.parent.name or folder.name}-{d.name}"
            bundle.merges.append(name)
            for f in MERGE_FILES:
                if (d / f).is_file():
                    data = (d / f).read_bytes()
                    bundle.add(f"results/{name}/{f}", _clean_scores(data) if f == "scores.json" else data)
            for y in sorted((d / ".eval_results").glob("*.yaml")):
                bundle.add(f"results/{name}/.eval_results/{y.name}", y.read_bytes())
    if folders and not bundle.merges:
        raise HfMergeError(f"no merges in {', '.join(map(str, folders))} (expected one sub-folder per merge with "
                           "merge_report.json or hfmerge.yaml, as `hfmerge demo` writes in demo_out/results)")


def add_family(bundle: SpaceBundle, family: Path) -> None:
    """base/ + expert folders + task rows under ``playground/``, refused when too big for free CPU Spaces."""
    if not (family / "base" / "config.json").is_file():
        raise HfMergeError(f"--playground {family} has no base/ model folder (with config.json)")
    experts = sorted(p for p in family.iterdir() if p.is_dir() and p.name != "base" and (p / "config.json").is_file())
    if not experts:
        raise HfMergeError(f"--playground {family} has no expert folders next to base/")
    if len(experts) > PLAYGROUND_MAX_EXPERTS:
        raise HfMergeError(f"--playground {family} has {len(experts)} experts; at most {PLAYGROUND_MAX_EXPERTS} "
                           "fit a free CPU Space")
    weights = [w for m in [family / "base", *experts] for w in sorted(m.glob("*.safetensors"))]
    total = sum(w.stat().st_size for w in weights)
    if total > PLAYGROUND_MAX_BYTES:
        raise HfMergeError(f"--playground {family} holds {total / 2**20:.0f} MiB of weights; a free CPU Space "
                           f"merges and scores in seconds only up to {PLAYGROUND_MAX_BYTES // 2**20} MiB: use a "
                           "smaller family (e.g. `hfmerge demo`'s demo_out/mini-llama)")
    if not weights:
        raise HfMergeError(f"--playground {family} has no *.safetensors weights")
    for model in [family / "base", *experts]:
        for f in sorted(model.iterdir()):
            if f.is_file() and (f.name in MODEL_FILES or f.name.endswith((".safetensors", ".safetensors.index.json"))):
                bundle.add(f"playground/{model.name}/{f.name}", f)
    domains = [e.name.removeprefix("expert-").removeprefix("expert_") for e in experts] + ["general"]
    for d in domains:
        for rel in (f"tasks/{d}.jsonl", f"data/{d}/validation.jsonl", f"data/{d}/test.jsonl"):
            if (family / rel).is_file():
                bundle.add(f"playground/{rel}", family / rel)
                break
    bundle.playground = family.name


def front_matter(gradio_version: str, title: str) -> str:
    import yaml

    meta = {"title": title, "emoji": "🧪", "colorFrom": "indigo", "colorTo": "green", "sdk": "gradio",
            "sdk_version": gradio_version, "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
            "app_file": "app.py", "pinned": False, "license": "apache-2.0",
            "tags": ["hfmerge", "model-merging", "mergebench", "leaderboard"],
            "short_description": "Compare LLM merges (MergeBench methods) and try merging live"}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def readme(space_dir: Path, gradio_version: str, title: str) -> bytes:
    text = (space_dir / "README.md").read_text()
    m = re.match(r"^---\s*\n.*?\n---\s*\n", text, re.S)
    body = text[m.end():] if m else text
    return (front_matter(gradio_version, title) + body).encode()


def requirements(root: Path, wheel_name: str) -> bytes:
    """torch's CPU wheel first, then what the app imports (pinned as tested), then hfmerge from its wheel."""
    lines = ["# The hfmerge Space: what app.py imports, pinned to the versions it is tested with.", TORCH]
    lines += [f"{name}=={pinned(root, name)}" for name in APP_REQUIREMENTS]
    lines += ["# hfmerge itself (merges in the Playground), built from the source it was deployed from",
              f"./wheels/{wheel_name}"]
    return ("\n".join(lines) + "\n").encode()


def bundle(results: list[Path] | None = None, playground: Path | None = None, title: str = "hfmerge",
           workdir: Path | None = None, log: Callable[[str], None] = print) -> SpaceBundle:
    """Every file of the Space (see the module docstring). ``workdir`` holds the built wheel."""
    root = checkout_root()
    space = root / "space"
    b = SpaceBundle()
    folders = [results_folders(Path(r).expanduser()) for r in results or []]
    if folders:
        add_results(b, folders)
    else:  # the bundled sample, so the leaderboard is never empty
        add_results(b, [space / "sample_results"])
    family = Path(playground).expanduser() if playground else find_family(folders)
    if family is not None:
        add_family(b, family)
    for f in APP_FILES:
        b.add(f, space / f)
    for png in sorted((space / "screenshots").glob("*.png")):
        b.add(f"screenshots/{png.name}", png)
    gradio_version = pinned(root, "gradio")
    b.add("README.md", readme(space, gradio_version, title))
    log("building the hfmerge wheel from the checkout")
    wheel = build_wheel(root, Path(workdir or tempfile.mkdtemp(prefix="hfmerge-space-")) / "wheel")
    b.add(f"wheels/{wheel.name}", wheel)
    b.add("requirements.txt", requirements(root, wheel.name))
    return b


def _check_secret(b: SpaceBundle, token: str | None) -> None:
    """Refuse to upload a file that contains the token (no file name printed with the token, never the token)."""
    if not token or len(token) < 8:
        return
    needle = token.encode()
    for path, content in b.files.items():
        data = content if isinstance(content, bytes) else content.read_bytes()
        if needle in data:
            raise HfMergeError(f"{path} contains your Hub token: remove it from that file; nothing was uploaded")


def deploy(repo: str, results: list[Path] | None = None, playground: Path | None = None, private: bool = False,
           token: str | None = None, log: Callable[[str], None] = print) -> str:
    """Create the Space ``repo`` (gradio SDK) if needed and upload the bundle in ONE commit; return its URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token

    from hfmerge.hub import hub_errors

    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo or ""):
        raise HfMergeError(f"--repo {repo!r} must look like NAMESPACE/NAME, e.g. --repo my-user/hfmerge")
    api = HfApi(token=token)
    secret = token or api.token or get_token()
    if secret is None:
        raise HfMergeError("no Hub token: log in with `hf auth login` or set HF_TOKEN")
    with tempfile.TemporaryDirectory(prefix="hfmerge-space-") as tmp:
        b = bundle(results, playground, title=repo.split("/")[1], workdir=Path(tmp), log=log)
        _check_secret(b, secret)
        ops = [CommitOperationAdd(path, io.BytesIO(c) if isinstance(c, bytes) else str(c))
               for path, c in sorted(b.files.items())]
        log(f"uploading {len(ops)} files ({b.size() / 2**20:.1f} MiB: {len(b.merges)} merges, "
            f"playground {b.playground or 'none'}) to the Space {repo} in one commit")
        with hub_errors(repo):
            api.create_repo(repo, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            stale = set(api.list_repo_files(repo, repo_type="space")) - set(b.files) - {".gitattributes"}
            ops += [CommitOperationDelete(p) for p in sorted(stale)]  # files of an earlier deploy
            info = api.create_commit(repo, ops, repo_type="space",
                                     commit_message=f"Deploy the hfmerge Space ({len(b.merges)} merges)")
    if b.playground is None:
        log("no Playground family: pass --playground DIR (e.g. demo_out/mini-llama from `hfmerge demo`)")
    return info.commit_url
