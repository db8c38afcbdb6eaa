"""The ``opskit`` command line: a click group, error mapping and the shared context.

Each verb lives in its own module under ``opskit/cli/`` and stays thin: parse options,
call the feature's ``run(ctx, ...)`` named in :mod:`opskit.actions`, render the result. Errors are mapped to exit
codes here, once: an OpskitError prints one line and exits with its code; anything else
is a bug (exit 1) and ``--debug`` shows the traceback.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar, cast

import click

from opskit import __version__
from opskit.cli import complete, examples
from opskit.cli.render import JSON_DOCUMENT_PRINTED
from opskit.config.load import load_config
from opskit.context import AppContext
from opskit.core import progress
from opskit.core.errors import OpskitError
from opskit.core.log import configure_logging
from opskit.core.redaction import redact_text

F = TypeVar("F", bound=Callable[..., Any])
JSON_ERRORS = "opskit.json_errors"  # ctx.meta key: --json was given, so errors are JSON too
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE, as the shell reports a tool whose reader left (core/errors.py)

# Command name -> the module whose `register(group)` adds it. Modules are imported only when
# their command runs (or help lists them): a backup started from cron pays for no migration code.
# This table stays apart from opskit/actions.py on purpose: it maps click names to CLI modules,
# which the layer below must not know, and is not 1:1 with actions (`backup` holds now, pin,
# unpin and verify; daemon, keygen and metrics are tools, not actions). tests/cli/test_actions.py
# checks the two against each other: every action's command exists, every command is accounted for.
COMMAND_MODULES = {
    "backup": "opskit.cli.backup",
    "config": "opskit.cli.config_check",
    "copy": "opskit.cli.copy",
    "daemon": "opskit.cli.daemon",
    "drill": "opskit.cli.drill",
    "keygen": "opskit.cli.keygen",
    "metrics": "opskit.cli.metrics",
    "migrate": "opskit.cli.migrate",
    "prune": "opskit.cli.prune",
    "restore": "opskit.cli.restore",
    "runbook": "opskit.cli.runbook",
    "status": "opskit.cli.status",
    "unlock": "opskit.cli.unlock",
    "wal": "opskit.cli.wal",
}


class LazyContext:
    """Holds global options; loads the config only when a command first asks for it."""

    def __init__(self, config_path: str | None, debug: bool) -> None:
        self.config_path = config_path
        self.debug = debug
        self._app: AppContext | None = None

    @property
    def app(self) -> AppContext:
        """Return the AppContext, loading and validating the config on first use."""
        if self._app is None:
            config = load_config(self.config_path)
            self._app = AppContext(
                config=config, interactive=sys.stdin.isatty() and sys.stderr.isatty(), debug=self.debug
            )
        return self._app


def pass_app(func: F) -> F:
    """Decorator: call the command with the AppContext as its first argument."""

    @click.pass_obj
    def wrapper(obj: LazyContext, *args: Any, **kwargs: Any) -> Any:
        return func(obj.app, *args, **kwargs)

    return cast(F, functools.update_wrapper(wrapper, func))


class OpskitGroup(click.Group):
    """A click group that loads its commands lazily and turns OpskitError into one line and an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        holder = click.Group()
        importlib.import_module(module).register(holder)
        command = holder.commands.get(cmd_name)
        return complete.attach(examples.attach(command)) if command is not None else None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Remembered for the error path, which runs after the verb's own options are gone.
        options = args[: args.index("--")] if "--" in args else args
        ctx.meta[JSON_ERRORS] = "--json" in options
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a reader that left shows here, not in the interpreter's exit
            return result
        except BrokenPipeError:
            _leave_for_closed_stdout()
        except OpskitError as exc:
            if getattr(ctx.obj, "debug", False):
                _print_traceback(exc)
            click.echo(f"opskit: error: {redact_text(exc.one_line())}", err=True)
            _echo_json_error(ctx, exc.exit_code, type(exc).__name__, exc.message, exc.hint)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt as interrupt:
            _echo_json_interrupt(ctx, interrupt)
            click.echo(f"opskit: interrupted; {_interrupted_state(interrupt)}", err=True)
            sys.exit(130)
        except Exception as exc:
            if getattr(ctx.obj, "debug", False):
                _print_traceback(exc)
            click.echo(
                f"opskit: unexpected error: {type(exc).__name__}: {redact_text(str(exc))}; "
                "run again with --debug for the traceback and report it",
                err=True,
            )
            _echo_json_error(ctx, 1, type(exc).__name__, str(exc), "run again with --debug and report it")
            sys.exit(1)


@click.group(cls=OpskitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="FILE", help="Config file (default: $OPSKIT_CONFIG, ./opskit.toml).")
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks on errors.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
    help="Log format on stderr: console on a terminal, JSON otherwise.",
)
@click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors on stderr; no progress lines.")
@click.version_option(__version__, prog_name="opskit")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, debug: bool, log_format: str, quiet: bool) -> None:
    """Keep PostgreSQL data safe and recoverable: backups, restores, migrations, drills.

    Exit codes (the same for every verb): 0 ok, 1 unexpected error, 2 usage/config
    error, 3 target or storage unreachable or refusing the credentials, 4 the run failed
    (backup, copy, restore, prune), 5 verification or drill check failed or a corrupt
    object, 6 objective breached, 7 lock held by another run, 130 interrupted, 141
    stdout closed by its reader.
    """
    configure_logging(debug=debug, json_logs=None if log_format == "auto" else log_format == "json", quiet=quiet)
    progress.set_quiet(quiet)
    # SIGTERM (docker stop, a CronJob's deadline) unwinds like Ctrl-C, so every open upload is
    # aborted and no manifest is written. The daemon installs its own, gentler handler.
    signal.signal(signal.SIGTERM, _terminate)
    ctx.obj = LazyContext(config_path, debug)


def _print_traceback(exc: BaseException) -> None:
    """Print ``exc``'s traceback (with its chain) to stderr, redacted like every other output.

    A library's message in the chain can quote a DSN or a fragment of a password; the
    traceback goes through the same :func:`redact_text` as the one error line.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    click.echo(redact_text(text), err=True, nl=False)


def _leave_for_closed_stdout() -> NoReturn:
    """Exit 141 without a word: stdout's reader left (``opskit backup list | head -1``).

    141 is what the shell reports for a tool killed by SIGPIPE, which Python ignores and turns
    into BrokenPipeError. stdout goes to /dev/null first, or the interpreter's own flush at exit
    raises again and prints "Exception ignored".
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_STDOUT_CLOSED)


def _echo_json_error(ctx: click.Context, code: int, kind: str, message: str, hint: str | None) -> None:
    """With ``--json``, print the error as one JSON object on stdout, where the script reads the result.

    The shape (docs/cli.md): ``{"error": {"exit_code", "type", "message", "hint"}}``; the one
    human line still goes to stderr. A command that printed its own document before failing
    (a failed drill's or verify's report) keeps stdout to that one document.
    """
    if ctx.meta.get(JSON_ERRORS) and not ctx.find_root().meta.get(JSON_DOCUMENT_PRINTED):
        error = {
            "exit_code": code,
            "type": kind,
            "message": redact_text(message),
            "hint": redact_text(hint or "") or None,
        }
        click.echo(json.dumps({"error": error}))


def _echo_json_interrupt(ctx: click.Context, interrupt: KeyboardInterrupt) -> None:
    """With ``--json``, print the interrupt as the error object (exit 130, type ``Interrupted``), like any error."""
    signal_name = "SIGTERM" if interrupt.args == (f"signal {int(signal.SIGTERM)}",) else "SIGINT"
    _echo_json_error(
        ctx, 130, "Interrupted", f"interrupted by {signal_name}", "the run was stopped; run it again to finish it"
    )


def _interrupted_state(interrupt: KeyboardInterrupt) -> str:
    """Return what an interrupted run left: the note its verb added (a runbook's), else "nothing was committed ...".

    A verb's run commits nothing before it finishes (uploads aborted, no manifest), except a
    runbook, whose earlier steps stay done: it adds a note saying so (``add_note``).
    """
    notes = [str(note) for note in getattr(interrupt, "__notes__", ())]
    return notes[-1] if notes else "nothing was committed for the run in progress"


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
