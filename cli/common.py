"""Shared CLI plumbing: one-line errors, quiet output when piped, colours on a terminal.

Why here and not in each command: every command must behave the same way for
users (``Error: ...`` and exit 1 for a user error, the traceback only with
``--verbose``, no progress bars or ANSI codes in logs), so the policy lives in
one place and the commands only raise.
"""
from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path

import click

from nbcnn import _atomic as atomic

# Exit codes: click uses 2 for usage errors; 130 is the shell's code for Ctrl-C.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UserError(click.ClickException):
    """A mistake the user can fix (bad file, bad value): one line, exit code 1, no traceback."""

    exit_code = EXIT_ERROR

    def show(self, file=None):
        error(self.format_message())


# Exceptions that mean "the input or the environment is wrong", not "nbcnn has a bug": the library
# reports bad input as ValueError/TypeError naming the argument; OSError covers files and disks,
# ImportError a missing optional package. Anything else (KeyError, IndexError, ...) is reported
# as an internal error.
def _user_error_types():
    types = [ValueError, TypeError, OSError, ImportError, MemoryError]
    try:
        from nbcnn.device import DeviceError
        types.append(DeviceError)
    except Exception:  # pragma: no cover - nbcnn itself is broken
        pass
    return tuple(types)


# ------------------------------------------------------------------ output

def stdout_is_tty() -> bool:
    return _isatty(sys.stdout)


def stderr_is_tty() -> bool:
    return _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def use_color(stream=None) -> bool:
    """Colours only on a terminal, and never with ``NO_COLOR`` set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return _isatty(stream if stream is not None else sys.stdout)


def style(text: str, stream=None, **kw) -> str:
    return click.style(text, **kw) if use_color(stream) else text


def echo(text: str = "", **kw) -> None:
    click.echo(text, color=use_color(sys.stdout), **kw)


def notice(text: str) -> None:
    """A visible one-line notice on stderr (kept out of piped stdout)."""
    click.echo(style(text, sys.stderr, fg="yellow"), err=True, color=use_color(sys.stderr))


def error(text: str) -> None:
    click.echo(style("Error: ", sys.stderr, fg="red", bold=True) + _one_line(text), err=True,
               color=use_color(sys.stderr))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def write_json(path, obj) -> Path:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    return atomic.write_json(path, obj, indent=2, default=_json_default)


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# ------------------------------------------------------------------ errors

def verbose_requested(ctx: click.Context | None = None) -> bool:
    if os.environ.get("NBCNN_VERBOSE", "").strip() not in ("", "0"):
        return True
    ctx = ctx or click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.meta.get("nbcnn.verbose") or (ctx.params or {}).get("verbose"):
            return True
        ctx = ctx.parent
    return False


def _set_verbose(ctx, _param, value):
    if value:
        ctx.meta["nbcnn.verbose"] = True
    return value


verbose_option = click.option(
    "-v", "--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbose,
    help="Show the full traceback when something fails.")


def handle_errors(func):
    """Decorator form of :func:`guarded` for commands used outside the ``nbcnn`` group."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return guarded(func, *args, **kwargs)

    return wrapper


def guarded(func, *args, **kwargs):
    """Run ``func`` turning exceptions into one-line messages and exit codes.

    User errors (missing files, bad values, shapes, an unusable GPU) print
    ``Error: <message>`` and exit 1; anything else is reported as an internal
    error, also on one line, with a hint to rerun with ``--verbose``.
    ``Ctrl-C`` exits 130 after the command's own clean-up ran.
    """
    try:
        return func(*args, **kwargs)
    except UserError:
        if verbose_requested():
            traceback.print_exc()
        raise
    except click.UsageError as exc:
        # click prints usage + a blank line + the error; one line with the way to help is enough.
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        error(exc.format_message() + hint)
        raise click.exceptions.Exit(EXIT_USAGE) from None
    except (click.exceptions.Exit, click.Abort, click.ClickException):
        raise
    except KeyboardInterrupt:
        if verbose_requested():
            traceback.print_exc()
        error("interrupted")
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except _user_error_types() as exc:
        if verbose_requested():
            traceback.print_exc()
        error(_describe(exc))
        raise click.exceptions.Exit(EXIT_ERROR) from None
    except Exception as exc:  # a bug: still one line, but say so
        if verbose_requested():
            traceback.print_exc()
        error(f"internal error: {type(exc).__name__}: {exc} "
              "(rerun with --verbose for the traceback and please report it)")
        raise click.exceptions.Exit(EXIT_ERROR) from None


class Group(click.Group):
    """The ``nbcnn`` group: every subcommand runs under :func:`guarded`, whoever wrote it."""

    def invoke(self, ctx):
        return guarded(super().invoke, ctx)

    def make_context(self, info_name, args, parent=None, **extra):
        # Errors in the group's own options (``nbcnn --bogus``) get the same one-line treatment.
        return guarded(super().make_context, info_name, args, parent=parent, **extra)


def _describe(exc: BaseException) -> str:
    msg = str(exc)
    if isinstance(exc, MemoryError):
        msg = f"out of memory{': ' + msg if msg else ''} (try a smaller --batch-size)"
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        msg = f"{exc.strerror}: {exc.filename}"
    if not msg:
        msg = type(exc).__name__
    return msg


# ------------------------------------------------------------------ help text

def examples(*lines: str) -> str:
    """An 'Examples' block for a command's ``--help`` (``\\b`` keeps click from rewrapping it)."""
    body = "\n".join(f"  {line}" for line in lines)
    return f"\b\nExamples:\n{body}"
