"""Consul's single-dash spellings, normalised before click parses (pure; property-tested)."""

from __future__ import annotations

import string

from hypothesis import given, strategies as st

from agentrpc.cli.argv import OptionSpec, normalise, options_of
from agentrpc.cli.main import _command_options

MEMBERS = {
    "--rpc-addr": OptionSpec(True),
    "--status": OptionSpec(True),
    "--wan": OptionSpec(False),
    "--detailed": OptionSpec(False),
}
SERVE = {
    "--server": OptionSpec(False, "--client"),
    "--client": OptionSpec(False, "--server"),
    "--join": OptionSpec(True),
}
COMMANDS = {"members": MEMBERS, "serve": SERVE}


def test_consul_spellings() -> None:
    assert normalise(["members", "-wan", "-detailed"], COMMANDS) == [
        "members",
        "--wan",
        "--detailed",
    ]
    assert normalise(["members", "-rpc-addr=127.0.0.1:8400", "-status", "alive"], COMMANDS) == [
        "members",
        "--rpc-addr=127.0.0.1:8400",
        "--status",
        "alive",
    ]
    assert normalise(["serve", "-server=false", "-join", "a:1"], COMMANDS) == [
        "serve",
        "--client",
        "--join",
        "a:1",
    ]
    assert normalise(["serve", "-server=true"], COMMANDS) == ["serve", "--server"]
    assert normalise(["members", "-wan=false"], COMMANDS) == ["members"]
    assert normalise(["members", "-wan=maybe"], COMMANDS) == ["members", "--wan=maybe"]


def test_what_is_left_alone() -> None:
    # The value of an option, even one that looks like a flag; everything after "--".
    assert normalise(["members", "-status", "-wan"], COMMANDS) == ["members", "--status", "-wan"]
    assert normalise(["members", "--status", "-wan"], COMMANDS) == ["members", "--status", "-wan"]
    assert normalise(["members", "--", "-wan"], COMMANDS) == ["members", "--", "-wan"]
    # Negative numbers, a lone dash, unknown commands.
    assert normalise(["members", "-1", "-"], COMMANDS) == ["members", "-1", "-"]
    assert normalise(["frobnicate", "-wan"], COMMANDS) == ["frobnicate", "-wan"]
    # An unknown long option is spelled whole, so that click names it in its error.
    assert normalise(["members", "-wat"], COMMANDS) == ["members", "--wat"]
    assert normalise(["members", "-rpc-addr"], COMMANDS) == ["members", "--rpc-addr"]


def test_version_and_help_words() -> None:
    for word in ("-v", "-version", "--version"):
        assert normalise([word], COMMANDS) == ["version"]
    assert normalise(["-help"], COMMANDS) == ["--help"]
    assert normalise(["members", "-h"], COMMANDS) == ["members", "--help"]
    assert normalise([], COMMANDS) == []


def test_the_real_commands_are_introspected() -> None:
    commands = _command_options()
    assert {"members", "join", "force-leave", "leave", "reload", "info", "monitor"} <= set(commands)
    assert {"serve", "proxy", "version"} <= set(commands)
    assert commands["members"]["--wan"] == OptionSpec(False)
    assert commands["members"]["--rpc-addr"] == OptionSpec(True)
    assert commands["serve"]["--server"] == OptionSpec(False, "--client")
    assert commands["serve"]["--dc"] == OptionSpec(True)
    assert commands["serve"]["--retry-join-wan"] == OptionSpec(True)
    assert options_of(object()) == {}


NAMES = sorted(MEMBERS)
words = st.text(alphabet=string.ascii_lowercase + string.digits + ".:", min_size=1, max_size=8)


@st.composite
def consul_lines(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A members command line in Consul's spelling, and the same line in ours."""
    consul: list[str] = ["members"]
    ours: list[str] = ["members"]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(NAMES))
        if MEMBERS[name].takes_value:
            value = draw(st.one_of(words, st.sampled_from(["-wan", "--x", "-1"])))
            if draw(st.booleans()):
                consul.append(f"-{name[2:]}={value}")
                ours.append(f"{name}={value}")
            else:
                consul += [f"-{name[2:]}", value]
                ours += [name, value]
        else:
            consul.append(f"-{name[2:]}")
            ours.append(name)
    return consul, ours


@given(consul_lines())
def test_single_dash_lines_become_ours(lines: tuple[list[str], list[str]]) -> None:
    consul, ours = lines
    assert normalise(consul, COMMANDS) == ours
    assert normalise(ours, COMMANDS) == ours  # ours is left as it is
    assert normalise(normalise(consul, COMMANDS), COMMANDS) == ours


@given(st.lists(st.one_of(words, st.sampled_from(["-wan", "-status", "--", "-x=1"]))))
def test_only_options_change_never_the_count_of_words(tail: list[str]) -> None:
    argv = ["members", *tail]
    result = normalise(argv, COMMANDS)
    assert result[0] == "members"
    # A "-x=false" flag may be dropped; nothing else is removed, added or reordered.
    assert len(result) <= len(argv)
    if not any(token.endswith("=false") for token in tail):
        assert len(result) == len(argv)
        for before, after in zip(argv, result, strict=True):
            assert after in (before, f"-{before}") or before == after
