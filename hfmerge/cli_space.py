"""`hfmerge space deploy`: the Space on the Hub (registered by hfmerge.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hfmerge.cli_base import examples

EXAMPLES = examples("hfmerge space deploy --repo you/hfmerge-space",
                    "hfmerge space deploy --repo you/hfmerge-space --results demo_out --private")
space_app = typer.Typer(help="The hfmerge Space (Gradio): put it on the Hub.", no_args_is_help=True, epilog=EXAMPLES)


@space_app.command(epilog=EXAMPLES)
def deploy(
    repo: Annotated[str, typer.Option(help="the Space NS/NAME (created with the gradio SDK if needed)")],
    results: Annotated[list[Path] | None, typer.Option(
        help="results folder to show (repeatable; a `hfmerge demo` folder means its results/); "
             "default: the bundled sample")] = None,
    playground: Annotated[Path | None, typer.Option(
        help="small model family for the Playground (base/ + expert folders); default: demo_out/mini-* "
             "beside --results")] = None,
    private: Annotated[bool, typer.Option(help="create the Space private")] = False,
) -> None:
    """Upload the app, its README, results, a Playground family and an hfmerge wheel in ONE commit."""
    from hfmerge.space_deploy import deploy as run_deploy

    url = run_deploy(repo, results, playground, private=private, log=typer.echo)
    typer.echo(f"deployed the Space {repo}: {url}")


def register(app: typer.Typer) -> None:
    """Add the `space` group to the main app."""
    app.add_typer(space_app, name="space")
