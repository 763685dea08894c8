"""Consul's and serf's single-dash flags beside ours: ``-wan``, ``-rpc-addr=X``, ``-status X``.

Go's ``flag`` package spells long options with one dash; click wants two. Before click parses
the command line, :func:`normalise` rewrites a single-dash token to the double-dash option of
the same name, and only when that command has such an option: ``-x=y`` and ``-x y`` for options
taking a value, ``-x`` (and Go's ``-x=true`` / ``-x=false``) for flags. An unknown ``-wat``
becomes ``--wat`` too (the CLI has no short options), so click names it whole in its "No such
option" error; the value after an option that takes one is never rewritten, nor anything
after ``--``, nor a negative number.

``-v``, ``-version`` and ``--version`` before a command mean the ``version`` command, and
``-h`` / ``-help`` mean ``--help``, as with the reference CLI.

Pure: the options come in as a plain mapping, built from the click command by
:func:`options_of`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

VERSION_WORDS: Final = frozenset({"-v", "-version", "--version"})
HELP_WORDS: Final = frozenset({"-h", "-help"})
_TRUE: Final = frozenset({"1", "t", "true"})
_FALSE: Final = frozenset({"0", "f", "false"})
"""Go's ``strconv.ParseBool`` spellings (case-insensitive here)."""


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One long option of a command: does it take a value; for a boolean flag with two names
    (``--server/--client``), the name that means false."""

    takes_value: bool
    negation: str | None = None


Options = Mapping[str, OptionSpec]
"""A command's long options by name (``--rpc-addr``)."""


def options_of(command: Any) -> dict[str, OptionSpec]:
    """The long options of a click command (both names of a ``--x/--no-x`` flag).

    Read by attribute, not by class: typer vendors click in its newer releases, so the
    command's classes are typer's or click's depending on the version installed."""
    options: dict[str, OptionSpec] = {}
    for param in getattr(command, "params", ()):
        if getattr(param, "param_type_name", "") != "option":
            continue
        takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        positive = [name for name in param.opts if name.startswith("--")]
        negative = [name for name in param.secondary_opts if name.startswith("--")]
        for name in positive:
            options[name] = OptionSpec(takes_value, negative[0] if negative else None)
        for name in negative:
            options[name] = OptionSpec(False, positive[0] if positive else None)
    return options


def normalise(argv: Sequence[str], commands: Mapping[str, Options]) -> list[str]:
    """``argv`` (without the program name) with single-dash long options made double-dash."""
    args = list(argv)
    if not args:
        return args
    if args[0] in VERSION_WORDS:
        return ["version", *args[1:]]
    if args[0] in HELP_WORDS:
        return ["--help", *args[1:]]
    options = commands.get(args[0])
    if options is None:
        return args
    out = [args[0]]
    rest = iter(args[1:])
    for token in rest:
        if token == "--":
            out.append(token)
            out.extend(rest)
            break
        if token.startswith("--"):
            name, equals, _ = token.partition("=")
            out.append(token)
            spec = options.get(name)
            if spec is not None and spec.takes_value and not equals:
                out.extend(_value_after(rest))
            continue
        if token in HELP_WORDS:
            out.append("--help")
            continue
        if len(token) < 3 or not token.startswith("-") or token[1].isdigit():
            out.append(token)
            continue
        name, equals, value = token[1:].partition("=")
        long = f"--{name}"
        spec = options.get(long)
        if spec is None:
            # No short options here: spelt whole, click says "No such option: --wat".
            out.append(f"{long}{equals}{value}")
        elif spec.takes_value:
            out.append(f"{long}{equals}{value}")
            if not equals:
                out.extend(_value_after(rest))
        elif not equals or value.lower() in _TRUE:
            out.append(long)
        elif value.lower() in _FALSE:
            if spec.negation is not None:
                out.append(spec.negation)
        else:
            out.append(f"{long}={value}")  # click says the flag takes no value
    return out


def _value_after(rest: Iterator[str]) -> list[str]:
    """The next token (an option's value), untouched; none at the end of the line."""
    value = next(rest, None)
    return [] if value is None else [value]


__all__ = ["OptionSpec", "Options", "normalise", "options_of"]
