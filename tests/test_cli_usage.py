"""The command line as people meet it, over EVERY command of the app (enumerated from it, so new commands are
covered): usage errors exit 2 with the usage line and one error line, user errors exit 1 with one line, only a
bug prints a traceback; -h/--help with real examples, --version, near-miss suggestions."""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from hfmerge import __version__
from hfmerge.cli import app
from hfmerge.cli_base import BUG_LINE

ROOT = get_command(app)
SCRIPT = Path(sys.executable).parent / "hfmerge"  # the console script of this venv


def _walk(group, path=()):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if hasattr(cmd, "commands"):
            yield from _walk(cmd, (*path, name))


GROUPS = [((), ROOT), *[(p, c) for p, c in _walk(ROOT) if hasattr(c, "commands")]]
LEAVES = [(p, c) for p, c in _walk(ROOT) if not hasattr(c, "commands")]
EVERY = GROUPS + LEAVES


def _id(case) -> str:
    return " ".join(case[0]) or "(root)"


def invoke(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="hfmerge")
    return result.exit_code, result.stdout, result.stderr


def assert_usage_error(code: int, out: str, err: str, message: str) -> str:
    """Exit 2, the usage line, then exactly one ``Error:`` line containing ``message``; no traceback."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("Usage: hfmerge"), err
    assert [line.startswith("Error: ") for line in lines].count(True) == 1 and lines[-1].startswith("Error: "), err
    assert message in lines[-1], (message, err)
    return lines[-1]


def assert_user_error(code: int, out: str, err: str, message: str) -> None:
    """Exit 1 and one ``error:`` line naming the culprit; no traceback."""
    assert code == 1, (code, out, err)
    assert "Traceback" not in out + err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert message in err, (message, err)


def test_every_command_is_enumerated():
    names = {" ".join(p) for p, _ in LEAVES}
    assert {"merge", "stats", "demo", "methods", "catalog", "pull", "push", "eval", "report", "tune"} <= names


@pytest.mark.parametrize("case", EVERY, ids=_id)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_with_examples(case, flag):
    path, cmd = case
    code, out, err = invoke(*path, flag)
    assert code == 0 and not err, err
    assert f"Usage: hfmerge {' '.join(path)}".rstrip() in out
    examples = out.split("Examples:", 1)[1] if "Examples:" in out else ""
    assert f"hfmerge {' '.join(path)}".rstrip() in examples, f"no example of {_id(case)} in its --help"


@pytest.mark.parametrize("case", EVERY, ids=_id)
def test_examples_parse(case):
    """Each example in a command's --help is a command line its parser accepts (no rotten option names)."""
    path, cmd = case
    lines = [" ".join(p.split()) for p in (cmd.epilog or "").replace("\\[", "[").split("\n\n")[1:]]
    assert lines, f"{_id(case)} has no examples"
    for line in lines:
        args = shlex.split(line)[1:]
        if "-h" in args or "--help" in args:
            continue
        group, ctx = ROOT, ROOT.make_context("hfmerge", list(args), resilient_parsing=False)
        rest = [*ctx._protected_args, *ctx.args]
        while hasattr(group, "commands"):
            name, group, rest = group.resolve_command(ctx, rest)
            sub = group.make_context(name, list(rest), parent=ctx)
            ctx, rest = sub, [*getattr(sub, "_protected_args", []), *sub.args]
        assert not rest, (line, rest)


@pytest.mark.parametrize("case", EVERY, ids=_id)
def test_unknown_option(case):
    path, _ = case
    assert_usage_error(*invoke(*path, "--no-such-flag"), "No such option: --no-such-flag")


def _long_options(cmd) -> list[str]:
    return [o for p in cmd.params for o in getattr(p, "opts", []) if o.startswith("--") and o != "--help"
            and len(o) > 5]


@pytest.mark.parametrize("case", [c for c in LEAVES if _long_options(c[1])], ids=_id)
def test_option_typo_suggests_the_option(case):
    path, cmd = case
    for opt in _long_options(cmd)[:3]:
        typo = opt[:3] + opt[4:]  # --output -> --otput
        if typo in _long_options(cmd):
            continue
        last = assert_usage_error(*invoke(*path, typo), f"No such option: {typo}")
        assert "(did you mean " in last and opt in last, last


def _value_options(cmd) -> list[str]:
    return [p.opts[0] for p in cmd.params if p.param_type_name == "option" and not getattr(p, "is_flag", False)]


@pytest.mark.parametrize("case", [c for c in LEAVES if _value_options(c[1])], ids=_id)
def test_option_without_its_value(case):
    path, cmd = case
    for opt in _value_options(cmd)[:2]:
        assert_usage_error(*invoke(*path, opt), f"Option '{opt}' requires an argument")


def _required(cmd) -> list:
    return [p for p in cmd.params if p.required]


@pytest.mark.parametrize("case", [c for c in LEAVES if _required(c[1])], ids=_id)
def test_missing_required_argument(case):
    path, cmd = case
    assert_usage_error(*invoke(*path), "Missing ")


@pytest.mark.parametrize("case", GROUPS, ids=_id)
def test_unknown_subcommand_of_a_group(case):
    path, group = case
    assert_usage_error(*invoke(*path, "no-such-command"), "No such command 'no-such-command'")
    for name in group.commands:
        if len(name) < 4:
            continue
        typo = name[0] + name[2:]  # merge -> mrge
        last = assert_usage_error(*invoke(*path, typo), f"No such command '{typo}'")
        assert f"'{name}'" in last.split("Did you mean", 1)[1], last


def _filled(cmd) -> tuple[list[str], bool]:
    """Values ("1") for every positional argument and required option; whether an argument is variadic."""
    args, variadic = [], False
    for p in cmd.params:
        if p.param_type_name == "argument":
            variadic |= p.nargs == -1
            args += ["1"] * max(p.nargs, 1)
        elif p.required:
            args += [p.opts[0], "1"]
    return args, variadic


def _extra_word(cmd) -> str | None:
    """What ``hfmerge CMD ... word`` must say: an unexpected extra argument, or (when CMD takes any number of
    arguments, so the word is one) the required option still missing; None when the word completes the command."""
    _, variadic = _filled(cmd)
    if not variadic:
        return "unexpected extra argument"
    return "Missing option" if any(p.param_type_name == "option" for p in _required(cmd)) else None


@pytest.mark.parametrize("case", [c for c in LEAVES if _extra_word(c[1])], ids=_id)
def test_unknown_subcommand_of_a_command(case):
    path, cmd = case
    filled, variadic = _filled(cmd)
    words = ["deploy-nothing"] if variadic else [*filled, "deploy-nothing"]
    assert_usage_error(*invoke(*path, *words), _extra_word(cmd))


def test_usage_errors_of_the_commands_themselves(tmp_path):
    assert_usage_error(*invoke("eval"), "give MODEL and -o OUTDIR")
    assert_usage_error(*invoke("eval", tmp_path, "-o", tmp_path / "o"), "exactly one of --suite or --tasks")
    assert_usage_error(*invoke("merge", "--method", "ties", "-o", tmp_path / "o"), "give one CONFIG.yaml")
    assert_usage_error(*invoke("merge", "--models", "a/b", "-o", tmp_path / "o"), "the flag form needs")
    assert_usage_error(*invoke("tune", tmp_path / "c.yaml", "-o", tmp_path / "o"), "exactly one of --suite")
    assert_usage_error(*invoke("merge", "c.yaml", "-o", tmp_path / "o", "--set", "densty"),
                       "--set 'densty' must look like name=value")
    assert_usage_error(*invoke("report", "m.json", "--base", "b.json", "--expert", "math", "--suite", "mini"),
                       "--expert 'math' must look like DOMAIN=results.json")
    assert_usage_error(*invoke("stats", "fisher", "m", "--data", "d", "-o", tmp_path / "o", "--samples", "many"),
                       "Invalid value for '--samples'")
    code, out, err = invoke()  # no command: the help, as a usage error
    assert code == 2 and "Usage: hfmerge" in out + err and "Traceback" not in out + err


def _results(path: Path, tasks: dict[str, float]) -> Path:
    path.write_text(json.dumps({"model": path.stem, "tasks": {t: {"em": v} for t, v in tasks.items()}}))
    return path


@pytest.fixture
def counting_hub(monkeypatch):
    """An endpoint on 127.0.0.1 that answers 404 to everything and counts the requests it gets."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self):
            seen.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_POST = _any

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_ENDPOINT", url)
    yield seen
    server.shutdown()


def test_user_errors_name_the_nearest_valid_name_before_any_hub_request(counting_hub, tmp_path):
    out = tmp_path / "out"
    flag = ["merge", "--base", "org/base", "--models", "org/expert", "-o", out]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"method": "task_arithmatic", "base_model": "org/base",
                                                      "models": ["org/expert"]}))
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"method": "soup", "base_model": "org/base",
                                                       "models": ["org/expert"]}))
    tasks = {"mini_math_test|0": 0.5, "mini_general_test|0": 0.4}
    res = [_results(tmp_path / f"{n}.json", tasks) for n in ("merge", "base", "math")]
    cases = [
        ([*flag, "--method", "tie"], "unknown method 'tie' (did you mean ties?)"),
        ([*flag, "--method", "ties", "--set", "densty=0.2"],
         "unknown parameter 'densty' for method ties (did you mean density?)"),
        ([*flag, "--method", "ties", "--set", "aggregate=meen"], "is not one of sum, mean"),
        ([*flag, "--method", "ties", "--set", "aggregate=meen"], "(did you mean mean?)"),
        ([*flag, "--method", "soup", "--set", "density=0.2"], "method soup takes no parameters"),
        (["merge", tmp_path / "c.yaml", "-o", out], "unknown method 'task_arithmatic' (did you mean task_arithmetic?)"),
        (["pull", "mergebench:llama-3.2-3b"], "unknown catalog alias 'mergebench:llama-3.2-3b' (did you mean "
                                              "mergebench:Llama-3.2-3B?)"),
        (["merge", "--method", "soup", "--base", "mergebench:gemma2-2b", "-o", out, "--models", "x/y"],
         "did you mean mergebench:gemma-2-2b?"),
        (["eval", tmp_path, "--suite", "mnii", "-o", out], "unknown suite 'mnii' (did you mean mini?)"),
        (["tune", tmp_path / "ok.yaml", "--suite", "validaton", "-o", out],
         "unknown suite 'validaton' (did you mean validation?)"),
        (["report", res[0], "--base", res[1], "--expert", f"mth={res[2]}", "--suite", "mini"],
         "unknown domain 'mth' in --expert (did you mean math?)"),
        (["report", res[0], "--base", res[1], "--expert", f"math={res[2]}", "--suite", "mini",
          "--forgetting", "mini_general_tset"], "unknown task 'mini_general_tset'"),
        (["report", res[0], "--base", res[1], "--expert", f"math={res[2]}", "--domain", "math=mini_mth_test"],
         "(did you mean mini_math_test?)"),
        (["demo", "--size", "tset", "--workdir", out], "unknown demo size 'tset' (did you mean test?)"),
        (["stats", "fishr", "org/expert", "--data", "org/data", "-o", out],
         "unknown statistics 'fishr' (did you mean fisher?)"),
        (["stats", "fisher", "org/expert", "--data", "org/data", "--prompt-format", "chatt", "-o", out],
         "unknown prompt format 'chatt' (did you mean chat?)"),
    ]
    for argv, expected in cases:
        assert_user_error(*invoke(*argv), expected)
        assert not counting_hub, (argv, counting_hub)  # the Hub was never asked
        assert not out.exists()
    code, _, err = invoke(*flag, "--method", "ties")  # control: the same sources with a valid method are looked up
    assert code == 1 and "Traceback" not in err and counting_hub, err
    code, stdout, _ = invoke("report", *res[:1], "--base", res[1], "--expert", f"math={res[2]}", "--suite", "mini",
                             "--forgetting", "mini_general_test")
    assert code == 0 and "merge" in stdout  # the same command with the names right


def _raising(exc: BaseException):
    def table():
        raise exc

    return table


def test_a_bug_prints_its_traceback_and_asks_for_a_report(monkeypatch):
    import hfmerge.catalog

    monkeypatch.setattr(hfmerge.catalog, "table", _raising(ZeroDivisionError("boom")))
    code, out, err = invoke("catalog")
    assert code == 1
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: boom" in err
    assert err.strip().splitlines()[-1] == BUG_LINE

    for exc, line in [(PermissionError(errno.EACCES, "Permission denied", "/srv/out"),
                       "error: Permission denied: /srv/out\n"),
                      (OSError(errno.ENOSPC, "No space left on device"), "error: No space left on device\n")]:
        monkeypatch.setattr(hfmerge.catalog, "table", _raising(exc))
        code, out, err = invoke("catalog")
        assert (code, err) == (1, line)  # the machine refused: one line, not a bug report
    monkeypatch.setattr(hfmerge.catalog, "table", lambda: Path("/nonexistent/x").read_text())
    code, out, err = invoke("catalog")
    assert code == 1 and "FileNotFoundError" in err and err.strip().splitlines()[-1] == BUG_LINE

    monkeypatch.setattr(hfmerge.catalog, "table", _raising(KeyboardInterrupt()))
    code, out, err = invoke("catalog")
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_DISABLE_XET": "1", **env})


def test_console_script_version_and_typos(tmp_path):
    res = _run("--version", PYTHONPROFILEIMPORTTIME="1")  # stderr: every module imported
    assert res.returncode == 0, res.stderr
    shown = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    assert shown["hfmerge"] == __version__
    for name in ("torch", "transformers", "huggingface_hub", "lighteval"):
        assert shown[name] == metadata.version(name), name
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "hfmerge.cli" in imported and not {"lighteval", "torch", "transformers"} & imported  # metadata only

    res = _run("mrege", "x.yaml", "-o", "out")
    assert_usage_error(res.returncode, res.stdout, res.stderr, "No such command 'mrege'. Did you mean 'merge'?")
    res = _run("merge", "x.yaml", "--outptu", str(tmp_path / "o"))
    assert_usage_error(res.returncode, res.stdout, res.stderr, "No such option: --outptu (did you mean --output?)")
