"""``hfmerge study``: the systematic study's protocol (hfmerge.eval.study) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hfmerge.cli_base import examples
from hfmerge.errors import HfMergeError


def study(
    config: Annotated[Path, typer.Argument(help="merge CONFIG.yaml: the base and the pool of experts")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for study.json, study.png, evaluations")],
    methods: Annotated[str, typer.Option(help="comma-separated methods, parameters as method:name=value "
                                              "(task_arithmetic runs as λ=1 and λ=1/n)")] = "task_arithmetic",
    sizes: Annotated[str, typer.Option(help="subset sizes, e.g. 2,4,6")] = "2",
    repeats: Annotated[int, typer.Option(help="random subsets per size (the study: 15)")] = 15,
    suite: Annotated[str | None, typer.Option(help="evaluation suite (see `hfmerge eval --list-suites`)")] = None,
    tasks: Annotated[str | None, typer.Option(help="lighteval tasks instead of a suite")] = None,
    custom_tasks: Annotated[Path | None, typer.Option(help="a lighteval custom-tasks file")] = None,
    limit: Annotated[int | None, typer.Option(help="at most N samples per task")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 8,
    data_dir: Annotated[Path | None, typer.Option(help="local copies of the datasets, Hub-repo layout")] = None,
    seed: Annotated[int, typer.Option(help="seed of the subset draws")] = 0,
    device: Annotated[str, typer.Option(help="device for the merges: cpu, cuda, mps")] = "cpu",
) -> None:
    """Merge seeded random subsets of the experts with each method, evaluate them, the base and every single
    expert; writes per method and size the share beating the base and the mean gains (resumable)."""
    from hfmerge.config import MergeConfig
    from hfmerge.eval.study import run_study, table

    try:
        size_list = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise HfMergeError(f"--sizes {sizes!r} must be comma-separated integers, e.g. 2,4,6") from None
    result = run_study(MergeConfig.from_file(config), methods, size_list, repeats, suite, output, tasks=tasks,
                       custom_tasks=custom_tasks, limit=limit, batch_size=batch_size, data_dir=data_dir, seed=seed,
                       device=device, log=typer.echo)
    typer.echo(table(result))
    typer.echo(f"-> {output / 'study.json'}, {output / 'study.png'}")


def register(app: typer.Typer) -> None:
    """Add the command to the main app."""
    app.command(epilog=examples(
        "hfmerge study examples/mergebench_llama3.2-3b_task_arithmetic.yaml --methods task_arithmetic,ties "
        "--sizes 2,4 --repeats 5 --suite mergebench -o study/llama3.2-3b"))(study)
