"""The Hub side against a loopback Hub: pull, lazy remote merge, push in one commit, errors, token hygiene."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from hfmerge.config import MergeConfig, ModelRef
from hfmerge.engine import merge
from hfmerge.errors import HfMergeError
from hfmerge.hub import open_remote, pull, push
from tests.tiny import make_family, publish

USER = "hfmerge-user"


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def published(local_hub, tmp_path_factory):
    """A base and 4 experts published to the loopback Hub (plus a pickle the pull must skip)."""
    base, experts = make_family(tmp_path_factory.mktemp("hubfam"), n_experts=4)
    (base / "pytorch_model.bin").write_bytes(b"pickle bytes a pull must never fetch")
    api = HfApi()
    names = publish(api, [base, *experts], f"{USER}/tiny")
    return (base, experts), (names[0], names[1:])


def test_pull_downloads_only_what_merges_need(published, tmp_path, capsys):
    _, (base_id, _) = published
    [(repo, path, sha)] = pull([base_id], local_dir=tmp_path / "pulled")
    files = {p.name for p in path.iterdir() if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"} <= files
    assert "pytorch_model.bin" not in files
    assert sha == HfApi().model_info(base_id).sha and sha in capsys.readouterr().out
    assert sha256(path / "model.safetensors") == sha256(published[0][0] / "model.safetensors")


def test_remote_lazy_merge_equals_local_merge(published, tmp_path):
    (base, experts), (base_id, expert_ids) = published
    params = {"density": 0.4, "topk_scope": "tensor"}  # one read of each tensor (global top-k reads twice)
    merge(MergeConfig("ties", str(base), [ModelRef(str(e)) for e in experts], params), tmp_path / "local",
          progress=False)
    report = merge(MergeConfig("ties", base_id, [ModelRef(e) for e in expert_ids], params), tmp_path / "remote",
                   progress=False)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert sha256(tmp_path / "local" / name) == sha256(tmp_path / "remote" / name), name
    # a weights file smaller than the speculative header range (256 KiB) is fetched whole by that one range,
    # and nothing of it again; + config.json (tests/test_remote.py counts planned ranges on larger files)
    for src, folder in zip(report["sources"][1:], experts, strict=True):
        assert src["bytes_fetched"] == sum((folder / f).stat().st_size for f in ("model.safetensors", "config.json"))
        assert src["transfer"]["requests"] == 2
    resolved = (tmp_path / "remote" / "hfmerge.yaml").read_text()
    assert HfApi().model_info(base_id).sha in resolved
    # the recorded revisions pin every source when the resolved config is merged again, even after the
    # expert repos got new commits
    for repo in expert_ids:  # every expert now holds the base's weights: unpinned, the merge would be the base
        HfApi().upload_file(path_or_fileobj=str(base / "model.safetensors"), path_in_repo="model.safetensors",
                            repo_id=repo)
    again = merge(MergeConfig.from_file(tmp_path / "remote" / "hfmerge.yaml"), tmp_path / "again", progress=False)
    assert again["sources"][0]["ref"].endswith("@" + HfApi().model_info(base_id).sha)
    assert sha256(tmp_path / "again" / "model.safetensors") == sha256(tmp_path / "local" / "model.safetensors")
    for folder, repo in zip(experts, expert_ids, strict=True):  # put the repos back for the other tests
        HfApi().upload_file(path_or_fileobj=str(folder / "model.safetensors"), path_in_repo="model.safetensors",
                            repo_id=repo)


def test_download_mode_matches_lazy_mode(published, tmp_path):
    _, (base_id, expert_ids) = published
    cfg = MergeConfig("task_arithmetic", base_id, [ModelRef(e) for e in expert_ids[:2]], {"scaling": 0.5})
    merge(cfg, tmp_path / "lazy", progress=False)
    merge(cfg, tmp_path / "dl", progress=False, download=True)
    assert sha256(tmp_path / "lazy" / "model.safetensors") == sha256(tmp_path / "dl" / "model.safetensors")


def test_push_is_one_commit_with_card_and_results(published, tmp_path, monkeypatch):
    (base, experts), (base_id, expert_ids) = published
    out = tmp_path / "merged"
    merge(MergeConfig("dare", base_id, [ModelRef(e) for e in expert_ids], {"drop_rate": 0.5}), out, progress=False)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"model": "m", "tasks": {"mini_math": {"em": 0.5, "em_stderr": 0.1}},
                                   "normalized": {"math": 0.8, "mean": 0.8}, "forgetting": 0.95}))
    (out / "results.json").write_text('{"stale": true}')  # the folder's own copy: the given results replace it
    repo = f"{USER}/tiny-dare"
    api = HfApi()
    paths, create_commit = [], HfApi.create_commit
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kw: (
        paths.extend(op.path_in_repo for op in operations), create_commit(self, repo_id, operations, **kw))[1])
    url = push(out, repo, results=results)
    assert len(paths) == len(set(paths)) and "results.json" in paths  # each file once in the commit
    commits = api.list_repo_commits(repo)
    assert len(commits) == 2 and commits[0].commit_id in url  # the repo's creation + exactly one upload
    for name in ("model.safetensors", "config.json", "hfmerge.yaml", "merge_report.json", "tokenizer.json"):
        assert sha256(hf_hub_download(repo, name)) == sha256(out / name), name
    card = ModelCard.load(repo)
    assert card.data.base_model_relation == "merge" and card.data.base_model[0] == base_id
    assert {"merge", "hfmerge", "dare"} <= set(card.data.tags)
    assert [(r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("mini_math", "em", 0.5)]
    assert "forgetting" in card.text and "0.8000" in card.text
    assert json.loads(open(hf_hub_download(repo, "results.json")).read())["forgetting"] == 0.95
    # a second push to a branch is again a single commit there
    push(out, repo, revision="v2")
    assert len(api.list_repo_commits(repo, revision="v2")) == 3


def test_interrupted_push_leaves_the_repo_unchanged(local_hub, published, tmp_path, monkeypatch):
    (base, experts), _ = published
    out = tmp_path / "merged"
    merge(MergeConfig("soup", str(base), [ModelRef(str(e)) for e in experts]), out, progress=False)
    repo = f"{USER}/tiny-interrupted"
    push(out, repo)
    before = HfApi().model_info(repo).sha
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[::-1])  # new LFS content

    def die(handler):  # the connection drops in the middle of the LFS upload, like a stopped server
        raise ConnectionResetError("server stopped")

    monkeypatch.setattr(local_hub.hub, "on_lfs_put", die)
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda s: None)  # skip the client's backoff
    with pytest.raises(HfMergeError) as err:
        push(out, repo)
    assert "\n" not in str(err.value) and repo in str(err.value)
    assert HfApi().model_info(repo).sha == before
    assert len(HfApi().list_repo_commits(repo)) == 2


def test_missing_and_gated_repos_give_one_line(local_hub, published):
    with pytest.raises(HfMergeError, match="not found"):
        open_remote(f"{USER}/does-not-exist")
    _, (base_id, _) = published
    with pytest.raises(HfMergeError, match="revision 'nope'"):
        open_remote(f"{base_id}@nope")
    local_hub.hub.repos[("model", base_id)].gated = True
    token = os.environ.pop("HF_TOKEN")
    try:
        with pytest.raises(HfMergeError, match="gated"):
            open_remote(base_id)
    finally:
        os.environ["HF_TOKEN"] = token
        local_hub.hub.repos[("model", base_id)].gated = False


def test_cli_push_never_shows_the_token(local_hub, published, tmp_path):
    (base, experts), _ = published
    out = tmp_path / "merged"
    merge(MergeConfig("soup", str(base), [ModelRef(str(e)) for e in experts[:2]]), out, progress=False)
    env = dict(os.environ, HF_ENDPOINT=local_hub.url, HF_TOKEN=local_hub.token, HF_HUB_DISABLE_XET="1")
    res = subprocess.run([sys.executable, "-m", "hfmerge.cli", "push", str(out), "--repo", f"{USER}/tiny-cli"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert local_hub.token not in res.stdout + res.stderr
    bad = subprocess.run([sys.executable, "-m", "hfmerge.cli", "push", str(out), "--repo", f"{USER}/tiny-cli"],
                         capture_output=True, text=True, env=dict(env, HF_TOKEN="hf_wrong_token_value"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "hf_wrong_token_value" not in bad.stderr
    for blob in (local_hub.hub.root / "blobs").iterdir():
        assert local_hub.token.encode() not in blob.read_bytes()
