"""`hfmerge eval | report | tune`: evaluation with lighteval (registered by hfmerge.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hfmerge.cli_base import examples, usage_error
from hfmerge.errors import HfMergeError
from hfmerge.files import write_atomic


def _model_arg(model: str):
    """A model folder or Hub id, or a merge config (merged in memory, never written)."""
    if model.endswith((".yaml", ".yml")) and Path(model).is_file():
        from hfmerge.config import MergeConfig

        return MergeConfig.from_file(model)
    return model


def eval_command(
    model: Annotated[str | None, typer.Argument(help="model folder, Hub id, or merge CONFIG.yaml")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for lighteval's files + results.json")]
    = None,
    suite: Annotated[str | None, typer.Option(help="a named suite (see --list-suites)")] = None,
    tasks: Annotated[str | None, typer.Option(help='lighteval tasks, e.g. "gsm8k|8,ifeval|0"')] = None,
    custom_tasks: Annotated[Path | None, typer.Option(help="a lighteval custom-tasks file (TASKS_TABLE)")] = None,
    limit: Annotated[int | None, typer.Option(help="at most N samples per task (partial scores)")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 8,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
    data_dir: Annotated[Path | None, typer.Option(help="local copies of the datasets, Hub-repo layout")] = None,
    list_suites: Annotated[bool, typer.Option("--list-suites", help="list the suites and their tasks")] = False,
    allow_code_execution: Annotated[bool, typer.Option(
        "--allow-code-execution", help="run model-written programs (coding tasks): each in its own limited, "
        "timed-out process; not a security sandbox")] = False,
    code_samples: Annotated[int, typer.Option(help="completions per coding problem: 1 = greedy pass@1, 10 = "
                                                   "MergeBench's protocol (T=0.2, top_p=0.95)")] = 1,
    safety_judge: Annotated[str, typer.Option(help="wildguard (allenai/wildguard, a GPU job) | strmatch (XSTest's "
                                                   "refusal string match: a CPU proxy)")] = "wildguard",
    judge_model: Annotated[str | None, typer.Option(help="WildGuard folder or Hub id (default allenai/wildguard)")]
    = None,
) -> None:
    """Evaluate a model with lighteval (offline when the data is local)."""
    from hfmerge.eval.suites import describe, get_suite

    if list_suites:
        typer.echo(describe())
        return
    if model is None or output is None:
        raise usage_error("give MODEL and -o OUTDIR (or --list-suites)")
    if bool(suite) == bool(tasks):
        raise usage_error("give exactly one of --suite or --tasks")
    from hfmerge.eval.runner import evaluate

    spec, custom, multilingual = tasks, custom_tasks, False
    if suite:
        s = get_suite(suite)
        spec, custom, multilingual = s.spec, custom_tasks or s.custom_tasks, s.multilingual
    if custom is not None and not Path(custom).is_file():
        raise HfMergeError(f"custom tasks file {custom} does not exist")
    result = evaluate(_model_arg(model), spec, output, custom_tasks=custom, limit=limit, batch_size=batch_size,
                      dtype=dtype, suite=suite, data_dir=data_dir, multilingual=multilingual,
                      allow_code_execution=allow_code_execution, code_samples=code_samples,
                      safety_judge=safety_judge, judge_model=judge_model)
    for task, metrics in result["tasks"].items():
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.endswith("_stderr"))
        typer.echo(f"{task:40s} {shown}")
    typer.echo(f"results: {Path(output) / 'results.json'}")


def report(
    merges: Annotated[list[Path], typer.Argument(help="results.json of each merge")],
    base: Annotated[Path, typer.Option(help="results.json of the base")],
    expert: Annotated[list[str], typer.Option(help="DOMAIN=results.json of that domain's expert (repeat)")],
    suite: Annotated[str | None, typer.Option(help="suite defining the domains' tasks")] = None,
    domain: Annotated[list[str] | None, typer.Option(help="DOMAIN=task1,task2 (instead of --suite)")] = None,
    forgetting: Annotated[str | None, typer.Option(help="forgetting task names, comma-separated")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the measures as JSON")] = None,
) -> None:
    """Normalized performance, forgetting, beats-base and gain over the best expert, per merge."""
    from hfmerge.eval.scores import load_results, measures, table
    from hfmerge.eval.suites import get_suite
    from hfmerge.suggest import require

    domains, metric, typed, low = {}, {}, [], ()
    if suite:
        s = get_suite(suite)
        domains, metric, low = dict(s.domains), dict(s.metric), s.lower_is_better
    for item in domain or []:
        name, _, tasks = item.partition("=")
        domains[name] = [t for t in tasks.split(",") if t]
        typed += domains[name]
    if not domains:
        raise usage_error("give --suite or --domain DOMAIN=task,... so domains map to tasks")
    experts = {}
    for item in expert:
        name, sep, path = item.partition("=")
        if not sep:
            raise usage_error(f"--expert {item!r} must look like DOMAIN=results.json")
        experts[require("domain", name, domains, " in --expert")] = load_results(path)
    base_results = load_results(base)
    forget = [t for t in (forgetting or "").split(",") if t]
    scored = {k.split("|")[0] for r in (base_results, *experts.values()) for k in r["tasks"]}
    for task in [*typed, *forget]:  # a misspelt task would silently drop out of the measures
        require("task", task, sorted(scored), " in the base's and experts' results")
    rows = {Path(m).parent.name or str(m): measures(load_results(m), base_results, experts, domains, forget, metric,
                                                           low)
            for m in merges}
    typer.echo(table(rows))
    if output:
        write_atomic(output, json.dumps(rows, indent=2) + "\n")


def tune(
    config: Annotated[Path, typer.Argument(help="merge CONFIG.yaml (its method and sources)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for tune.json, best.yaml, evaluations")],
    grid: Annotated[str | None, typer.Option(help='e.g. "scaling=0.2:1.0:0.2,density=0.1,0.2" (default: '
                                                  "MergeBench's grid for the method)")] = None,
    suite: Annotated[str | None, typer.Option(help="validation suite")] = None,
    tasks: Annotated[str | None, typer.Option(help="validation tasks instead of a suite")] = None,
    custom_tasks: Annotated[Path | None, typer.Option(help="a lighteval custom-tasks file")] = None,
    limit: Annotated[int | None, typer.Option(help="at most N samples per task")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size")] = 8,
    data_dir: Annotated[Path | None, typer.Option(help="local copies of the datasets, Hub-repo layout")] = None,
    allow_code_execution: Annotated[bool, typer.Option(
        "--allow-code-execution", help="run model-written programs (coding validation tasks)")] = False,
    safety_judge: Annotated[str, typer.Option(help="wildguard | strmatch (CPU proxy)")] = "wildguard",
    judge_model: Annotated[str | None, typer.Option(help="WildGuard folder or Hub id")] = None,
) -> None:
    """Grid-search a method's parameters on validation tasks; writes the best config and the cost."""
    from hfmerge.config import MergeConfig
    from hfmerge.eval.suites import get_suite
    from hfmerge.tune import parse_grid, suite_scorer, write_results
    from hfmerge.tune import tune as run_tune

    if bool(suite) == bool(tasks):
        raise usage_error("give exactly one of --suite or --tasks (validation tasks, never the test tasks)")
    cfg = MergeConfig.from_file(config)
    spec, custom, metric = tasks, custom_tasks, None
    if suite:
        s = get_suite(suite)
        spec, custom, metric = s.spec, custom_tasks or s.custom_tasks, s.metric
    from hfmerge.eval import code_exec, coding

    if not allow_code_execution and {t.split("|")[0] for t in spec.split(",")} & set(coding.TIMEOUT):
        raise HfMergeError(code_exec.REFUSAL)  # before any candidate is merged
    scorer = suite_scorer(cfg, spec, output / "evaluations", custom_tasks=custom, limit=limit, batch_size=batch_size,
                          metric=metric, data_dir=data_dir, allow_code_execution=allow_code_execution,
                          safety_judge=safety_judge, judge_model=judge_model)
    result = run_tune(cfg, parse_grid(grid) if grid else None, scorer)
    best = write_results(result, cfg, output)
    typer.echo(result.table())
    typer.echo(f"best: {result.best['parameters']} (score {result.best['score']:.4f}); {len(result.rows)} "
               f"evaluations, {result.merges} merges, {result.seconds:.1f} s -> {best}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    app.command("eval", epilog=examples(
        "hfmerge eval --list-suites",
        "hfmerge eval out/ties --suite mergebench -o evals/ties",
        'hfmerge eval out/ties --tasks "gsm8k|8" --limit 100 -o evals/ties-gsm8k'))(eval_command)
    app.command(epilog=examples(
        "hfmerge report evals/ties/results.json --base evals/base/results.json --expert math=evals/math/results.json "
        "--suite mergebench --forgetting mmlu,triviaqa"))(report)
    app.command(epilog=examples(
        'hfmerge tune examples/mergebench_llama3.2-3b_ties.yaml --grid "scaling=0.2:1.0:0.2,density=0.1,0.2" '
        "--suite validation -o tune/ties"))(tune)
