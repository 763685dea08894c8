"""What every command shares: writing wire text safely, failing in one line, running trio.

An expected failure is one line on stderr and exit status 1 (:func:`fail`); Ctrl-C while a
command runs is exit status 130 without a trace (:func:`run_trio`), except for the commands
whose normal end it is (``monitor``, ``proxy``, ``serve``), which exit 0.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn, TypeVar

import trio
import typer

T = TypeVar("T")

MESSAGE_LIMIT: Final = 2000
"""Characters of one error line at most (an agent's error text can be long)."""
EXIT_INTERRUPTED: Final = 130
"""The shell's status for a command ended by SIGINT (128 + 2)."""


def echo(text: str, *, err: bool = False) -> None:
    """``typer.echo`` for text that may carry names from the wire.

    A name that is not UTF-8 arrives holding lone surrogates (the codec decodes with
    surrogateescape), which a strict UTF-8 stream refuses. Such a line is written as bytes:
    the name's original bytes, as the Go CLI prints them (on stdout and stderr alike); where
    the stream has no byte buffer, or its encoding cannot hold the rest of the text, as
    backslash escapes. Never a traceback."""
    stream = sys.stderr if err else sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        pass
    else:
        typer.echo(text, err=err)
        return
    line = text + "\n"
    if getattr(stream, "buffer", None) is not None:
        try:
            raw = line.encode(encoding, "surrogateescape")
        except UnicodeEncodeError:
            raw = line.encode(encoding, "backslashreplace")
        typer.echo(raw, nl=False, err=err)
    else:
        escaped = line.encode(encoding, "backslashreplace").decode(encoding)
        typer.echo(escaped, nl=False, err=err)


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` on one line (its lines joined by spaces), cut to ``limit`` characters."""
    flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(flat) > limit:
        flat = f"{flat[:limit]}... ({len(flat)} characters)"
    return flat


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    echo(one_line(message), err=True)
    raise typer.Exit(code)


def only_interrupts(error: BaseException) -> bool:
    """Whether ``error`` is a KeyboardInterrupt, or a group holding nothing else."""
    if isinstance(error, BaseExceptionGroup):
        return all(only_interrupts(inner) for inner in error.exceptions)
    return isinstance(error, KeyboardInterrupt)


def run_trio(main: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(main)``; Ctrl-C (a KeyboardInterrupt, however trio groups it) exits 130."""
    try:
        return trio.run(main)
    except BaseException as error:
        if only_interrupts(error):
            raise typer.Exit(EXIT_INTERRUPTED) from None
        raise


__all__ = ["EXIT_INTERRUPTED", "echo", "fail", "one_line", "only_interrupts", "run_trio"]
