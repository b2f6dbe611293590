"""The Hub side: lazy remote reads for merging, `pull` (selective download) and `push` (one atomic commit).

Every call goes through huggingface_hub (its HTTP session, endpoint and token resolution: HF_TOKEN or
`hf auth login`). Tokens are never printed, logged or written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

from hfmerge.errors import HfMergeError
from hfmerge.sources import LocalReader

# what a merge needs: never pickles or optimizer states
MERGE_FILES = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "tokenizer*",
               "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template*",
               "adapter_config.json"]


def split_ref(ref: str) -> tuple[str, str | None]:
    """``org/name@revision`` -> (``org/name``, revision or None)."""
    repo, _, rev = ref.partition("@")
    return repo, rev or None


@contextmanager
def hub_errors(repo: str, revision: str | None = None):
    """Turn huggingface_hub's exceptions into one-line user errors."""
    try:
        yield
    except GatedRepoError:
        raise HfMergeError(f"{repo} is gated: request access on its Hub page, then log in (`hf auth login` or "
                           "HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HfMergeError(f"revision {revision!r} of {repo} does not exist on the Hub") from None
    except RepositoryNotFoundError:
        raise HfMergeError(f"Hub repo {repo} not found (check the name; if it is private, log in with "
                           "`hf auth login` or set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise HfMergeError(f"cannot reach the Hub for {repo} (offline?) and it is not in the local cache") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        if status == 401:
            raise HfMergeError(f"the Hub refused the token for {repo} (HTTP 401): log in again with "
                               "`hf auth login` or fix HF_TOKEN") from None
        raise HfMergeError(f"Hub request for {repo} failed (HTTP {status}): {str(e).splitlines()[0]}") from None
    except RuntimeError as e:  # the client wraps failed LFS uploads: "Error while uploading 'x' to the Hub."
        cause = e.__cause__ or e
        raise HfMergeError(f"upload to {repo} failed ({type(cause).__name__}: {' '.join(str(cause).split())}); "
                           "nothing was committed") from None
    except (OSError, httpx.HTTPError) as e:  # connection errors
        raise HfMergeError(f"cannot reach the Hub for {repo} ({type(e).__name__}: {' '.join(str(e).split())}); "
                           "nothing was changed") from None


class RemoteReader:
    """Byte ranges of a Hub repo pinned to a commit sha, fetched with HTTP Range requests (with retries)."""

    def __init__(self, repo: str, revision: str | None = None, repo_type: str = "model"):
        with hub_errors(repo, revision):
            info = HfApi().repo_info(repo, revision=revision, repo_type=repo_type, files_metadata=True)
        self.repo, self.repo_type, self.revision = repo, repo_type, info.sha
        self.label = f"{repo}@{info.sha[:10]}"
        self.sizes = {s.rfilename: s.size for s in info.siblings or []}
        self.bytes_fetched = 0

    def list_files(self) -> list[str]:
        return sorted(self.sizes)

    def _get(self, file: str, headers: dict | None = None):
        url = hf_hub_url(self.repo, file, revision=self.revision, repo_type=self.repo_type)
        with hub_errors(self.repo, self.revision):
            resp = http_backoff("GET", url, headers={**build_hf_headers(), **(headers or {})},
                                retry_on_status_codes=(429, 500, 502, 503, 504), max_retries=5)
            hf_raise_for_status(resp)
        return resp

    def read_range(self, file: str, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        resp = self._get(file, {"Range": f"bytes={offset}-{offset + length - 1}"})
        data = resp.content
        if resp.status_code == 200:  # server ignored Range
            data = data[offset:offset + length]
        if len(data) != length:
            raise HfMergeError(f"{self.label}/{file}: short read ({len(data)} of {length} bytes)")
        self.bytes_fetched += len(data)
        return data

    def read_file(self, file: str) -> bytes | None:
        if file not in self.sizes:
            return None
        data = self._get(file).content
        self.bytes_fetched += len(data)
        return data

    def copy_to(self, file: str, dest: Path) -> None:
        dest.write_bytes(self.read_file(file) or b"")

    def close(self) -> None:
        pass


def open_remote(ref: str, download: bool = False):
    """A Reader for a Hub ref: lazy byte ranges, or (``download``) a local snapshot in the HF cache."""
    repo, revision = split_ref(ref)
    if not download:
        return RemoteReader(repo, revision)
    path, sha = _snapshot(repo, revision)
    reader = LocalReader(path)
    reader.revision = sha
    reader.label = f"{repo}@{sha[:10]}"
    return reader


def _snapshot(repo: str, revision: str | None, local_dir: Path | None = None,
              repo_type: str = "model", patterns: list[str] | None = MERGE_FILES) -> tuple[Path, str]:
    with hub_errors(repo, revision):
        sha = HfApi().repo_info(repo, revision=revision, repo_type=repo_type).sha
        path = snapshot_download(repo, revision=sha, repo_type=repo_type, allow_patterns=patterns,
                                 local_dir=local_dir)
    return Path(path), sha


def download(ref: str) -> Path:
    """A full local copy of a Hub model (for statistics, which run the model)."""
    repo, revision = split_ref(ref)
    return _snapshot(repo, revision)[0]


def pull(refs: list[str], revision: str | None = None, local_dir: str | Path | None = None,
         echo: Callable[[str], None] = print) -> list[tuple[str, Path, str]]:
    """Download what merges need (weights, index, configs, tokenizer; never pickles) of each repo."""
    from hfmerge.catalog import expand

    out = []
    for ref in expand(refs):
        repo, rev = split_ref(ref)
        target = Path(local_dir) / repo.replace("/", "__") if local_dir else None
        path, sha = _snapshot(repo, rev or revision, target)
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
    ops = [CommitOperationAdd(str(p.relative_to(folder)), str(p)) for p in files
           if p.relative_to(folder).as_posix() != "README.md"]
    ops.append(CommitOperationAdd("README.md", _card_bytes(folder, repo_id, results_data)))
    if results_data is not None:
        ops.append(CommitOperationAdd("results.json", json.dumps(results_data, indent=2).encode() + b"\n"))
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
