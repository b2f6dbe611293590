"""`hfmerge catalog | pull | push`: the Hub side of the command line (registered by hfmerge.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hfmerge.cli_base import examples


def catalog() -> None:
    """The MergeBench catalog: 8 bases × 5 domains = 40 experts (alias: mergebench:<base name>)."""
    from hfmerge.catalog import table

    typer.echo(table())


def pull(
    refs: Annotated[list[str], typer.Argument(help="Hub ids org/name\\[@rev] or aliases mergebench:<base>")],
    revision: Annotated[str | None, typer.Option(help="revision for refs without @rev")] = None,
    local_dir: Annotated[Path | None, typer.Option(help="download into this folder instead of the HF cache")] = None,
) -> None:
    """Download only what a merge needs (safetensors, index, configs, tokenizer; never pickles), resumably."""
    from hfmerge.hub import pull as run_pull

    run_pull(refs, revision, local_dir, echo=typer.echo)


def push(
    folder: Annotated[Path, typer.Argument(help="a merged model folder (output of hfmerge merge)")],
    repo: Annotated[str, typer.Option(help="target repo NS/NAME (created if needed)")],
    private: Annotated[bool, typer.Option(help="create the repo private")] = False,
    results: Annotated[Path | None, typer.Option(help="evaluation results JSON to publish with the card")] = None,
    revision: Annotated[str | None, typer.Option(help="branch to commit to (created if needed)")] = None,
) -> None:
    """Upload the model, its card and results to the Hub in ONE commit (a failure leaves the repo unchanged)."""
    from hfmerge.hub import push as run_push

    url = run_push(folder, repo, private=private, results=results, revision=revision)
    typer.echo(f"pushed {folder} to {repo}: {url}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    app.command(epilog=examples("hfmerge catalog", "hfmerge pull mergebench:Llama-3.2-3B"))(catalog)
    app.command(epilog=examples("hfmerge pull mergebench:Llama-3.2-3B",
                                "hfmerge pull meta-llama/Llama-3.2-3B@main --local-dir models/llama-3.2-3b"))(pull)
    app.command(epilog=examples("hfmerge push out/ties --repo you/llama3.2-3b-ties",
                                "hfmerge push out/ties --repo you/llama3.2-3b-ties --results evals/ties/results.json "
                                "--private"))(push)
