"""The ``hfmerge`` command: a thin layer over the library. Usage errors exit 2, user errors print one line and
exit 1 (hfmerge.cli_base)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from hfmerge.cli_base import CONTEXT_SETTINGS, HfMergeGroup, examples, show_version, usage_error

app = typer.Typer(cls=HfMergeGroup, context_settings=CONTEXT_SETTINGS, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  epilog=examples("hfmerge merge examples/mergebench_llama3.2-3b_ties.yaml -o out/ties",
                                  "hfmerge merge -h"),
                  help="Merge fine-tuned checkpoints of one base model, with the MergeBench methods.")


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=show_version,
                                                help="show the versions of hfmerge and its libraries")] = False):
    """Merge fine-tuned checkpoints of one base model, with the MergeBench methods."""


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise usage_error(f"--set {pair!r} must look like name=value, e.g. --set density=0.2")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command(context_settings={"allow_interspersed_args": True}, epilog=examples(
    "hfmerge merge examples/mergebench_llama3.2-3b_ties.yaml -o out/ties",
    "hfmerge merge --method ties --base meta-llama/Llama-3.2-3B --models MergeBench/Llama-3.2-3B_math "
    "MergeBench/Llama-3.2-3B_coding --set density=0.3 -o out/ties"))
def merge(
    args: Annotated[list[str] | None, typer.Argument(
        help="CONFIG.yaml, or (with --models) further expert paths/ids", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="output folder (appears only when complete)")] = ...,
    method: Annotated[str | None, typer.Option(help="merge method (see `hfmerge methods`)")] = None,
    base: Annotated[str | None, typer.Option(help="base model: folder or Hub id org/name\\[@rev]")] = None,
    models: Annotated[list[str] | None, typer.Option(help="expert folders or Hub ids")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="method parameter name=value (repeatable)")] = None,
    dtype: Annotated[str | None, typer.Option(help="output dtype: bfloat16|float16|float32 (default: base's)")] = None,
    shard_size: Annotated[str, typer.Option(help="max bytes per output shard, e.g. 5GB, 500MB")] = "5GB",
    seed: Annotated[int | None, typer.Option(help="random seed (DARE)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
    device: Annotated[str, typer.Option(help="device for the arithmetic: cpu, cuda, mps")] = "cpu",
    download: Annotated[bool, typer.Option(help="download Hub sources to the HF cache first (default: read them "
                                                "lazily by byte ranges)")] = False,
    read_ahead: Annotated[str, typer.Option(help="memory for Hub ranges fetched ahead, shared by all sources "
                                                 "(e.g. 512MiB, 2GiB)")] = "512MiB",
    connections: Annotated[int, typer.Option(help="Hub ranges in flight at once (one connection each)")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Merge a base model and its experts, from a config file (native or mergekit) or from flags."""
    from hfmerge.config import MergeConfig
    from hfmerge.job import merge as run_merge

    args, sets = list(args or []), parse_sets(set_ or [])
    if models:
        if not (method and base):
            raise usage_error("the flag form needs --method, --base and --models")
        data = {"method": method, "base_model": base, "models": [*models, *args]}
        config = MergeConfig.from_dict(data, "command line")
    else:
        if len(args) != 1 or method or base:
            raise usage_error("give one CONFIG.yaml, or --method/--base/--models")
        config = MergeConfig.from_file(args[0])
    config.parameters.update(sets)
    config.validate()  # method and parameters, before any source is opened
    if dtype:
        from hfmerge.config import normalize_dtype

        config.dtype = normalize_dtype(dtype)
    if seed is not None:
        config.seed = seed
    from hfmerge import remote
    from hfmerge.writer import parse_size

    remote.configure(read_ahead=parse_size(read_ahead), connections=connections)
    report = run_merge(config, output, shard_size=shard_size, overwrite=overwrite, device=device, progress=not quiet,
                       download=download)
    typer.echo(
        f"merged {len(config.models)} experts with {report['method']} into {output} "
        f"({report['bytes_written'] / 1e9:.2f} GB, {report['wall_seconds']:.1f} s, "
        f"peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB)"
    )


@app.command(epilog=examples(
    "hfmerge stats fisher MergeBench/Llama-3.2-3B_math --data MergeBench/math_val -o stats/math-fisher",
    "hfmerge stats masks MergeBench/Llama-3.2-3B_math --data MergeBench/math_val --base meta-llama/Llama-3.2-3B "
    "-o stats/math-mask"))
def stats(
    kind: Annotated[str, typer.Argument(help="fisher | regmean | masks")],
    model: Annotated[str, typer.Argument(help="the expert: folder or Hub id")],
    data: Annotated[str, typer.Option(help="its domain's dataset: folder (Hub layout), jsonl/parquet file or Hub id")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for stats.safetensors + stats.json")],
    samples: Annotated[int, typer.Option(help="examples used")] = 1000,
    split: Annotated[str, typer.Option(help="dataset split")] = "train",
    prompt_format: Annotated[str, typer.Option(help="plain | alpaca (MergeBench) | chat")] = "plain",
    variant: Annotated[str, typer.Option(help="fisher: hard_last (MergeBench) | sft")] = "hard_last",
    base: Annotated[str | None, typer.Option(help="masks: the base model")] = None,
    sparsity: Annotated[float, typer.Option(help="masks: initial top-s fraction")] = 0.1,
    lr: Annotated[float, typer.Option(help="masks: learning rate")] = 0.1,
    epochs: Annotated[int, typer.Option(help="masks: epochs")] = 1,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Statistics of ONE model on its own data, for fisher, regmean and trained localize_stitch merges."""
    from hfmerge.config import DEFAULT_SKIP
    from hfmerge.stats.store import compute_stats

    folder = compute_stats(kind, model, data, out=output, samples=samples, split=split, prompt_format=prompt_format,
                           fisher_variant=variant, base_ref=base, skip=DEFAULT_SKIP, sparsity=sparsity, lr=lr,
                           epochs=epochs, seed=seed, progress=not quiet)
    typer.echo(f"{kind} statistics of {model} written to {folder}")


@app.command(epilog=examples("hfmerge demo", "hfmerge demo --size test --arch gemma2 --workdir demo_gemma"))
def demo(
    workdir: Annotated[Path, typer.Option(help="where the mini-MergeBench, merges and results go")] = Path("demo_out"),
    size: Annotated[str, typer.Option(help="demo | test (smaller, for CI)")] = "demo",
    hub: Annotated[str | None, typer.Option(help="use this Hub URL instead of starting one on 127.0.0.1")] = None,
    arch: Annotated[str, typer.Option(help="llama | gemma2")] = "llama",
) -> None:
    """The whole pipeline offline on the mini-MergeBench: build, publish, pull, merge, tune, evaluate, push."""
    from hfmerge.demo import SIZES, run
    from hfmerge.suggest import require

    require("demo size", size, SIZES)
    require("demo architecture", arch, ("llama", "gemma2"))
    run(workdir, size, hub, log=typer.echo, arch=arch)


@app.command(epilog=examples(
    "hfmerge methods",
    "hfmerge merge --method dare --base meta-llama/Llama-3.2-3B --models MergeBench/Llama-3.2-3B_math "
    "--set drop_rate=0.9 -o out/dare"))
def methods() -> None:
    """List the merge methods with their parameters, defaults and ranges."""
    from hfmerge.methods.registry import METHODS

    for m in METHODS.values():
        typer.echo(f"{m.name:16s} {m.summary}\n{'':16s} {m.formula}\n{'':16s} {m.paper}")
        for name, p in m.params.items():
            typer.echo(f"{'':18s}{name} = {p.default!s:8s} {p.describe():12s} {p.help}")
        typer.echo("")


def _register_command_groups() -> None:
    """Command groups living in their own modules (hub, eval, ...) add themselves to ``app``."""
    from hfmerge import cli_eval, cli_hub, cli_space, cli_study

    cli_hub.register(app)
    cli_eval.register(app)
    cli_study.register(app)
    cli_space.register(app)


_register_command_groups()


def main() -> None:
    """The console script: exits 0, 1 (user error), 2 (usage error) or 130 (interrupted)."""
    app(prog_name="hfmerge")


if __name__ == "__main__":
    main()
