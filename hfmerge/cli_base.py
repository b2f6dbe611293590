"""How an ``hfmerge`` command ends, the way click/typer users expect:

- a usage error (unknown command or option, missing argument, bad value) prints the usage line and one
  ``Error:`` line (with the nearest valid name when one is close) and exits 2;
- a user error from the library (:class:`HfMergeError`) prints ``error: <one line>`` and exits 1;
- the machine refusing (permission denied, disk full, read-only) prints one ``error:`` line and exits 1;
- Ctrl-C exits 130; only a bug prints a traceback, followed by a line asking to report it (exit 1).

Also ``--version`` and ``-h`` as ``--help`` on every command.
"""

from __future__ import annotations

import errno
import platform
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 ships its own copy of click: the separate `click` package's exceptions are other classes
    from typer._click import exceptions as click_exceptions
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions
    from click import get_current_context

from hfmerge.errors import HfMergeError

USAGE_EXIT, USER_EXIT, INTERRUPTED_EXIT = 2, 1, 130
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
BUG_LINE = ("this is a bug in hfmerge, not a problem with your input: please report it with the command you ran "
            "and the traceback above")
# the machine's state, not hfmerge's logic: one line, no traceback
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EMFILE}
VERSIONED = ("torch", "transformers", "huggingface_hub", "lighteval")  # distributions shown by --version


def versions() -> dict[str, str]:
    """hfmerge's version and those of the libraries that decide its results, read from the installed
    distributions' metadata (importing lighteval takes seconds and may fail offline)."""
    from hfmerge import __version__

    out = {"hfmerge": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def show_version(value: bool) -> None:
    """The ``--version`` callback: one ``name version`` line per component."""
    if value:
        typer.echo("\n".join(f"{k} {v}" for k, v in versions().items()))
        raise typer.Exit()


def examples(*commands: str) -> str:
    """A command's ``--help`` epilog: real command lines, one per paragraph (``[`` escaped from rich markup)."""
    return "Examples:\n\n" + "\n\n".join("  " + c.replace("[", "\\[") for c in commands)


def usage_error(message: str) -> click_exceptions.UsageError:
    """A usage error of the running command (exit 2, printed under its usage line)."""
    return click_exceptions.UsageError(message, ctx=get_current_context(silent=True))


def _reword(e: click_exceptions.ClickException) -> click_exceptions.ClickException:
    """click lists near options (best first) as ``(Possible options: --output)``; say ``(did you mean --output?)``."""
    if isinstance(e, click_exceptions.NoSuchOption) and e.possibilities:
        e.message = f"{e.message} (did you mean {' or '.join(e.possibilities[:2])}?)"
        e.possibilities = None
    return e


def _bug() -> typer.Exit:
    """Print the traceback of the exception being handled and the line asking to report it."""
    traceback.print_exc()
    typer.echo(BUG_LINE, err=True)
    return typer.Exit(USER_EXIT)


def _command_context(ctx: Any, words: list[str]) -> Any:
    """The context of the deepest (sub)command named in ``words``, for its usage line."""
    for word in words:
        cmd = ctx.command.get_command(ctx, word) if hasattr(ctx.command, "get_command") else None
        if cmd is None:
            break
        ctx = cmd.make_context(word, [], parent=ctx, resilient_parsing=True)
    return ctx


class HfMergeGroup(TyperGroup):
    """The root command group: turns every way a command can end into its message and exit status."""

    def invoke(self, ctx: Any) -> Any:
        words = [*getattr(ctx, "_protected_args", []), *ctx.args]  # the command line below this group
        try:
            return super().invoke(ctx)
        except click_exceptions.UsageError as e:
            if e.ctx is None:  # click's parser raises some (an option without its value) without their command
                e.ctx = _command_context(ctx, words)
            raise
        except (click_exceptions.ClickException, typer.Exit, typer.Abort):
            raise  # usage errors and explicit exits: handled by main()
        except HfMergeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(USER_EXIT) from None
        except BrokenPipeError:
            raise  # output piped into `head`: click exits quietly
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise _bug() from None
            where = f": {e.filename}" if e.filename else ""
            typer.echo(f"error: {e.strerror}{where}", err=True)
            raise typer.Exit(USER_EXIT) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: nothing was written", err=True)
            raise typer.Exit(INTERRUPTED_EXIT) from None
        except Exception:
            raise _bug() from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                **extra)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except click_exceptions.ClickException as e:  # usage errors: the usage line, one error line, exit 2
            _reword(e).show()
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(USER_EXIT)
        sys.exit(rv if isinstance(rv, int) else 0)
