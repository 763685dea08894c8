"""Linear-time regular expressions for serf's tag filters (Go's ``regexp.MatchString``).

A query's tag filter is a regular expression chosen by whoever sent the query, matched against
one of our tags. Go's ``regexp`` (RE2) runs in time linear in the input whatever the pattern;
Python's :mod:`re` backtracks, and a pattern such as ``(a*)*b`` takes exponential time, so a
peer could stall the event loop with one query. This module compiles the common RE2 subset to
an NFA and runs it as a Pike VM (no backtracking): time ``O(len(program) * len(text))``, with
the program bounded by :data:`MAX_PROGRAM_SIZE` instructions.

Supported: literals and escaped metacharacters; ``.``; classes ``[abc]``, ``[^a-z]`` with
ranges and the escapes ``\\d \\w \\s`` (and their negations) inside or outside classes;
``\\t \\n \\r \\f \\v``; anchors ``^`` and ``$`` (whole text, as in Go without flags);
alternation ``|``; groups ``(...)``, ``(?:...)``, ``(?P<name>...)``; quantifiers ``* + ?`` and
``{n}``, ``{n,}``, ``{n,m}`` (at most 1000, as RE2), each optionally lazy (``*?``; laziness
does not change whether a match exists). Anything else (flags, ``\\b``, POSIX classes, Unicode
classes) is refused with :class:`RegexpError`, which serf's filter treats as a failed filter,
as it treats a pattern Go cannot compile.

Matching is unanchored (``MatchString`` reports a match anywhere in the text).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_PROGRAM_SIZE", "MAX_REPEAT", "Regexp", "RegexpError", "match_string"]

MAX_REPEAT: Final = 1000
"""The largest count of a ``{n,m}`` repeat (RE2's limit)."""
MAX_PROGRAM_SIZE: Final = 20_000
"""Instructions a compiled pattern may have (repeats expand); larger ones are refused."""


class RegexpError(ValueError):
    """A pattern this module cannot compile (invalid, unsupported, or too large)."""


# A character class: sorted inclusive code point ranges, possibly negated.
_Ranges = tuple[tuple[int, int], ...]

_DIGIT: Final[_Ranges] = ((ord("0"), ord("9")),)
_WORD: Final[_Ranges] = ((ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("_"), ord("_")),
                         (ord("a"), ord("z")))  # fmt: skip
_SPACE: Final[_Ranges] = ((9, 10), (12, 13), (32, 32))
_ESCAPED_CHARS: Final = {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v"}
_META: Final = frozenset("\\.+*?()|[]{}^$-/")


@dataclass(frozen=True, slots=True)
class _Class:
    ranges: _Ranges
    negated: bool = False

    def matches(self, code: int) -> bool:
        found = False
        for low, high in self.ranges:
            if low <= code <= high:
                found = True
                break
        return found != self.negated


# AST nodes are tuples: ("char", _Class), ("cat", [nodes]), ("alt", [nodes]),
# ("repeat", node, min, max_or_-1), ("bol",), ("eol",), ("empty",).
_Node = tuple[object, ...]


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0

    def error(self, what: str) -> RegexpError:
        return RegexpError(f"error parsing regexp: {what}: `{self.text}`")

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def parse(self) -> _Node:
        node = self.alternation()
        if self.pos != len(self.text):
            raise self.error("unexpected )")
        return node

    def alternation(self) -> _Node:
        branches = [self.concatenation()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.concatenation())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def concatenation(self) -> _Node:
        items: list[_Node] = []
        while (char := self.peek()) is not None and char not in "|)":
            atom = self.atom()
            items.append(self.quantified(atom))
        if not items:
            return ("empty",)
        return items[0] if len(items) == 1 else ("cat", items)

    def quantified(self, atom: _Node) -> _Node:
        char = self.peek()
        if char is None:
            return atom
        if char in "*+?":
            self.pos += 1
            low, high = {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[char]
        elif char == "{" and self._looks_like_repeat():
            low, high = self.repeat_bounds()
        else:
            return atom
        if self.peek() == "?":
            self.pos += 1  # lazy: the same language
        next_char = self.peek()
        if (next_char is not None and next_char in "*+") or (
            next_char == "{" and self._looks_like_repeat()
        ):
            raise self.error("invalid nested repetition operator")
        return ("repeat", atom, low, high)

    def _looks_like_repeat(self) -> bool:
        end = self.text.find("}", self.pos)
        if end < 0:
            return False
        inner = self.text[self.pos + 1 : end]
        low, comma, high = inner.partition(",")
        return low.isdigit() and (not comma or not high or high.isdigit())

    def repeat_bounds(self) -> tuple[int, int]:
        end = self.text.index("}", self.pos)
        inner = self.text[self.pos + 1 : end]
        self.pos = end + 1
        low_text, comma, high_text = inner.partition(",")
        low = int(low_text)
        high = low if not comma else (-1 if not high_text else int(high_text))
        if low > MAX_REPEAT or high > MAX_REPEAT or (high >= 0 and high < low):
            raise self.error(f"invalid repeat count: {{{inner}}}")
        return low, high

    def atom(self) -> _Node:
        char = self.text[self.pos]
        if char == "(":
            return self.group()
        self.pos += 1
        if char == ".":
            return ("char", _Class(((10, 10),), negated=True))
        if char == "^":
            return ("bol",)
        if char == "$":
            return ("eol",)
        if char == "[":
            return ("char", self.char_class())
        if char == "\\":
            return ("char", self.escape(in_class=False))
        if char in "*+?":
            raise self.error(f"missing argument to repetition operator: {char}")
        return ("char", _Class(((ord(char), ord(char)),)))

    def group(self) -> _Node:
        self.pos += 1
        if self.text.startswith("?:", self.pos):
            self.pos += 2
        elif self.text.startswith("?P<", self.pos):
            end = self.text.find(">", self.pos)
            if end < 0:
                raise self.error("invalid named capture")
            self.pos = end + 1
        elif self.peek() == "?":
            raise self.error("invalid or unsupported Perl syntax")
        node = self.alternation()
        if self.peek() != ")":
            raise self.error("missing closing )")
        self.pos += 1
        return node

    def escape(self, *, in_class: bool) -> _Class:
        if self.pos >= len(self.text):
            raise self.error("trailing backslash at end of expression")
        char = self.text[self.pos]
        self.pos += 1
        named = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
        if char in named:
            return _Class(named[char])
        if char.lower() in named:
            return _Class(named[char.lower()], negated=True)
        if char in _ESCAPED_CHARS:
            code = ord(_ESCAPED_CHARS[char])
            return _Class(((code, code),))
        if char in _META or (not char.isalnum() and ord(char) < 128):
            return _Class(((ord(char), ord(char)),))
        raise self.error(f"invalid or unsupported escape sequence: \\{char}")

    def char_class(self) -> _Class:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        negated_parts: list[_Class] = []
        first = True
        while True:
            char = self.peek()
            if char is None:
                raise self.error("missing closing ]")
            if char == "]" and not first:
                self.pos += 1
                break
            first = False
            if char == "[" and self.text.startswith("[:", self.pos):
                raise self.error("unsupported character class")
            low = self._class_char(ranges, negated_parts)
            if low is None:
                continue
            if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                high = self._class_char(ranges, negated_parts)
                if high is None or high < low:
                    raise self.error("invalid character class range")
                ranges.append((low, high))
            else:
                ranges.append((low, low))
        if negated_parts:
            # [\D] or [^\S...]: fold the complement of each negated escape into the ranges.
            for part in negated_parts:
                ranges.extend(_complement(part.ranges))
        return _Class(_normalise(ranges), negated)

    def _class_char(self, ranges: list[tuple[int, int]], negated_parts: list[_Class]) -> int | None:
        """One character of a class as a code point; None when it was an escape class
        (already added to ``ranges`` or ``negated_parts``)."""
        char = self.text[self.pos]
        self.pos += 1
        if char != "\\":
            return ord(char)
        cls = self.escape(in_class=True)
        if len(cls.ranges) == 1 and cls.ranges[0][0] == cls.ranges[0][1] and not cls.negated:
            return cls.ranges[0][0]
        if cls.negated:
            negated_parts.append(cls)
        else:
            ranges.extend(cls.ranges)
        return None


def _normalise(ranges: list[tuple[int, int]]) -> _Ranges:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def _complement(ranges: _Ranges) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    start = 0
    for low, high in _normalise(list(ranges)):
        if low > start:
            out.append((start, low - 1))
        start = high + 1
    if start <= 0x10FFFF:
        out.append((start, 0x10FFFF))
    return out


# Instructions: ("char", _Class), ("split", a, b), ("jmp", a), ("bol",), ("eol",), ("match",)
_Inst = list[object]


class _Compiler:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.program: list[_Inst] = []

    def emit(self, inst: _Inst) -> int:
        if len(self.program) >= MAX_PROGRAM_SIZE:
            raise RegexpError(f"error parsing regexp: expression too large: `{self.pattern}`")
        self.program.append(inst)
        return len(self.program) - 1

    def compile(self, node: _Node) -> None:
        kind = node[0]
        if kind == "char":
            self.emit(["char", node[1]])
        elif kind in ("bol", "eol"):
            self.emit([kind])
        elif kind == "empty":
            pass
        elif kind == "cat":
            for item in node[1]:  # type: ignore[attr-defined]
                self.compile(item)
        elif kind == "alt":
            branches: list[_Node] = node[1]  # type: ignore[assignment]
            jumps: list[int] = []
            for index, branch in enumerate(branches):
                if index < len(branches) - 1:
                    split = self.emit(["split", 0, 0])
                    self.program[split][1] = len(self.program)
                    self.compile(branch)
                    jumps.append(self.emit(["jmp", 0]))
                    self.program[split][2] = len(self.program)
                else:
                    self.compile(branch)
            for jump in jumps:
                self.program[jump][1] = len(self.program)
        else:  # repeat
            _, atom, low, high = node
            assert isinstance(low, int) and isinstance(high, int)
            atom_node: _Node = atom  # type: ignore[assignment]
            for _ in range(low):
                self.compile(atom_node)
            if high < 0:
                split = self.emit(["split", 0, 0])
                self.program[split][1] = len(self.program)
                self.compile(atom_node)
                self.emit(["jmp", split])
                self.program[split][2] = len(self.program)
            else:
                splits: list[int] = []
                for _ in range(high - low):
                    split = self.emit(["split", 0, 0])
                    self.program[split][1] = len(self.program)
                    splits.append(split)
                    self.compile(atom_node)
                for split in splits:
                    self.program[split][2] = len(self.program)


class Regexp:
    """A compiled pattern; :meth:`search` is Go's ``MatchString``."""

    __slots__ = ("_program", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        compiler = _Compiler(pattern)
        compiler.compile(_Parser(pattern).parse())
        compiler.emit(["match"])
        self._program = tuple(tuple(inst) for inst in compiler.program)

    def search(self, text: str) -> bool:
        """True if the pattern matches anywhere in ``text``."""
        program = self._program
        end = len(text)
        current: list[int] = []
        self._add(current, set(), 0, 0, end)
        for pos in range(end + 1):
            if any(program[pc][0] == "match" for pc in current):
                return True
            if pos == end:
                break
            code = ord(text[pos])
            following: list[int] = []
            seen: set[int] = set()
            for pc in current:
                inst = program[pc]
                if inst[0] == "char" and inst[1].matches(code):  # type: ignore[attr-defined]
                    self._add(following, seen, pc + 1, pos + 1, end)
            # Unanchored: a new attempt may start at every position.
            self._add(following, seen, 0, pos + 1, end)
            current = following
        return any(program[pc][0] == "match" for pc in current)

    def _add(self, threads: list[int], seen: set[int], pc: int, pos: int, end: int) -> None:
        """Add ``pc`` and everything reachable from it without reading a character."""
        program = self._program
        stack = [pc]
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            inst = program[pc]
            op = inst[0]
            if op == "jmp":
                stack.append(inst[1])  # type: ignore[arg-type]
            elif op == "split":
                stack.append(inst[2])  # type: ignore[arg-type]
                stack.append(inst[1])  # type: ignore[arg-type]
            elif op == "bol":
                if pos == 0:
                    stack.append(pc + 1)
            elif op == "eol":
                if pos == end:
                    stack.append(pc + 1)
            else:
                threads.append(pc)


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Regexp:
    return Regexp(pattern)


def match_string(pattern: str, text: str) -> bool:
    """Go's ``regexp.MatchString(pattern, text)``; :class:`RegexpError` for a bad pattern.
    The last 256 patterns stay compiled (a bounded cache: patterns come from peers)."""
    return _compiled(pattern).search(text)
