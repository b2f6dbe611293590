"""The Hub side above the readers: `pull` (selective download) and `push` (one atomic commit), and the
model-level helpers around them. Byte-range reading lives in :mod:`hfmerge.remote`.

Every call goes through huggingface_hub (its HTTP session, endpoint and token resolution: HF_TOKEN or
`hf auth login`). Tokens are never printed, logged or written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from hfmerge.errors import HfMergeError
from hfmerge.remote import MERGE_FILES, hub_errors, snapshot, split_ref
from hfmerge.sources import Reader, open_reader

__all__ = ["MERGE_FILES", "download", "hub_errors", "open_remote", "pull", "push", "split_ref"]


def open_remote(ref: str, download: bool = False) -> Reader:
    """A Reader for a Hub ref: lazy byte ranges, or (``download``) a local snapshot in the HF cache."""
    return open_reader(ref, download)


def download(ref: str) -> Path:
    """A full local copy of a Hub model (for statistics, which run the model)."""
    repo, revision = split_ref(ref)
    return snapshot(repo, revision)[0]


def pull(refs: list[str], revision: str | None = None, local_dir: str | Path | None = None,
         echo: Callable[[str], None] = print) -> list[tuple[str, Path, str]]:
    """Download what merges need (weights, index, configs, tokenizer; never pickles) of each repo."""
    from hfmerge.catalog import expand

    out = []
    for ref in expand(refs):
        repo, rev = split_ref(ref)
        target = Path(local_dir) / repo.replace("/", "__") if local_dir else None
        path, sha = snapshot(repo, rev or revision, target)
        echo(f"{repo}@{sha} -> {path}")
        out.append((repo, path, sha))
    return out


def push(folder: str | Path, repo_id: str, *, private: bool = False, results: str | Path | None = None,
         revision: str | None = None, token: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload the merged folder, its refreshed card and results in ONE
    commit; on any failure the repo is left as it was. Returns the commit URL."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HfMergeError(f"{folder} is not a model folder (no config.json): push the output of `hfmerge merge`")
    api = HfApi(token=token)
    if api.token is None and token is None:
        from huggingface_hub import get_token

        if get_token() is None:
            raise HfMergeError("no Hub token: log in with `hf auth login` or set HF_TOKEN")
    results_data = None
    if results:
        try:
            results_data = json.loads(Path(results).read_text())
        except (OSError, ValueError) as e:
            raise HfMergeError(f"cannot read results {results}: {e}") from None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    generated = {"README.md"} | ({"results.json"} if results_data is not None else set())  # written below
    ops = [CommitOperationAdd(str(p.relative_to(folder)), str(p)) for p in files
           if p.relative_to(folder).as_posix() not in generated]
    ops.append(CommitOperationAdd("README.md", _card_bytes(folder, repo_id, results_data)))
    if results_data is not None:
        ops.append(CommitOperationAdd("results.json", json.dumps(results_data, indent=2).encode() + b"\n"))
        from hfmerge.eval_results import FOLDER, files  # .eval_results/*.yaml naming Hub benchmark datasets

        ops = [op for op in ops if not op.path_in_repo.startswith(FOLDER + "/")]
        ops += [CommitOperationAdd(p, data) for p, data in files(results_data, repo_id, revision).items()]
    with hub_errors(repo_id, revision):
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, ops, commit_message=f"Upload {folder.name} (hfmerge)",
                                 revision=revision)
    return info.commit_url


def _card_bytes(folder: Path, repo_id: str, results: dict | None) -> bytes:
    """The card for the Hub: regenerated from hfmerge.yaml + merge_report.json (with results) when present."""
    import yaml

    from hfmerge.card import render_card

    config, report = folder / "hfmerge.yaml", folder / "merge_report.json"
    if config.is_file() and report.is_file():
        card = render_card(yaml.safe_load(config.read_text()), json.loads(report.read_text()), repo_id, results)
        return str(card).encode()
    readme = folder / "README.md"
    return readme.read_bytes() if readme.is_file() else f"# {repo_id}\n".encode()
