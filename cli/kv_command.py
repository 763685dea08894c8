"""``agentrpc kv get|put|delete``: Consul's ``consul kv`` commands over the HTTP API.

Registered on the main app with ``app.add_typer(kv_command.app, name="kv")``. Texts follow
the reference: ``Success! Data written to: KEY``, ``Success! Deleted key: KEY``,
``Error! No key exists at: KEY``, a CAS that lost ``Error! Did not write to KEY: CAS failed``
(exit status 1).
"""

from __future__ import annotations

import base64
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Final

import typer

from ..http_api.client import (
    DEFAULT_TIMEOUT,
    HTTPClient,
    HTTPClientError,
    HTTPTimeoutError,
    NotHTTPError,
)
from .agent_options import ENV_RPC_TIMEOUT, AsJson, print_json
from .common import echo, fail

app = typer.Typer(
    name="kv",
    help="Read and write the key/value store over the HTTP API.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

HTTPAddr = Annotated[
    str | None,
    typer.Option(
        "--http-addr", help="The agent's HTTP API (HOST:PORT; CONSUL_HTTP_ADDR, 127.0.0.1:8500)."
    ),
]
Token = Annotated[str | None, typer.Option("--token", help="ACL token (CONSUL_HTTP_TOKEN).")]
Datacenter = Annotated[str, typer.Option("--datacenter", help="Datacenter to query.")]
Stale = Annotated[bool, typer.Option("--stale", help="Allow any server to answer (stale).")]
HTTPTimeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        envvar=ENV_RPC_TIMEOUT,
        help=f"Seconds to connect, and again for each answer; env {ENV_RPC_TIMEOUT}.",
    ),
]


def client(
    http_addr: str | None, token: str | None, datacenter: str, timeout: float = DEFAULT_TIMEOUT
) -> HTTPClient:
    """The HTTP client of a command; a bad address or --timeout is one line and exit 1."""
    if not (timeout > 0 and math.isfinite(timeout)):
        fail(f"Invalid --timeout {timeout!r}: it must be a positive number of seconds.")
    try:
        return HTTPClient(http_addr, token=token, datacenter=datacenter, timeout=timeout)
    except HTTPClientError as exc:
        fail(str(exc))


CONNECT_HINT: Final = (
    " (is the agent serving its HTTP API? start it with --http-addr, and give that address"
    " here with --http-addr or CONSUL_HTTP_ADDR)"
)


def explain(exc: HTTPClientError) -> str:
    """The client's line, with what to do: the flag that sets the deadline after a timeout,
    where the HTTP address comes from when nothing listened there."""
    if isinstance(exc, HTTPTimeoutError):
        return f"{exc}; --timeout ({ENV_RPC_TIMEOUT}) sets the deadline"
    text = str(exc)
    if isinstance(exc, NotHTTPError) or not text.startswith("Error connecting"):
        return text
    return text + CONNECT_HINT


def entry_json(entry: dict[str, Any]) -> dict[str, Any]:
    """A KV entry as the HTTP API gives it (``Value`` base64, ``null`` when empty)."""
    return {
        "CreateIndex": int(entry.get("CreateIndex", 0)),
        "Flags": int(entry.get("Flags", 0)),
        "Key": str(entry.get("Key", "")),
        "LockIndex": int(entry.get("LockIndex", 0)),
        "ModifyIndex": int(entry.get("ModifyIndex", 0)),
        "Session": str(entry.get("Session") or ""),
        "Value": entry.get("Value") or None,
    }


def _value(entry: dict[str, Any]) -> bytes:
    raw = entry.get("Value")
    return base64.b64decode(raw) if raw else b""


def _write_value(value: bytes, as_base64: bool) -> None:
    if as_base64:
        echo(base64.b64encode(value).decode())
        return
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    if out is None:
        echo(value.decode("utf-8", "replace"))
        return
    sys.stdout.flush()
    out.write(value + b"\n")
    out.flush()


def _detailed(entry: dict[str, Any], as_base64: bool) -> None:
    value = _value(entry)
    shown = base64.b64encode(value).decode() if as_base64 else value.decode("utf-8", "replace")
    rows = [
        ("CreateIndex", str(entry.get("CreateIndex", 0))),
        ("Flags", str(entry.get("Flags", 0))),
        ("Key", str(entry.get("Key", ""))),
        ("LockIndex", str(entry.get("LockIndex", 0))),
        ("ModifyIndex", str(entry.get("ModifyIndex", 0))),
        ("Session", str(entry.get("Session") or "-")),
        ("Value", shown),
    ]
    for name, value_text in rows:
        echo(f"{name:<17}{value_text}")


@app.command("get")
def get(
    key: Annotated[str, typer.Argument(help="The key (or prefix, with --recurse/--keys).")] = "",
    recurse: Annotated[bool, typer.Option("--recurse", help="Every key under KEY.")] = False,
    keys: Annotated[bool, typer.Option("--keys", help="Only the key names.")] = False,
    separator: Annotated[
        str, typer.Option("--separator", help="With --keys: roll up at this separator.")
    ] = "/",
    detailed: Annotated[bool, typer.Option("--detailed", help="Every field.")] = False,
    as_base64: Annotated[bool, typer.Option("--base64", help="Values as base64.")] = False,
    http_addr: HTTPAddr = None,
    token: Token = None,
    datacenter: Datacenter = "",
    stale: Stale = False,
    timeout: HTTPTimeout = DEFAULT_TIMEOUT,
    as_json: AsJson = False,
) -> None:
    """Print the value of KEY (``consul kv get``); ``--json``: the entry as the HTTP API gives
    it (a list with --recurse, the names with --keys, ``[]`` for none)."""
    if key.startswith("/"):
        key = key[1:]
    if not key and not (recurse or keys):
        fail("Error! Missing KEY argument")
    params: list[tuple[str, str]] = [("stale", "")] if stale else []
    with client(http_addr, token, datacenter, timeout) as http:
        try:
            if keys:
                params += [("keys", "")]
                if separator:
                    params.append(("separator", separator))
                answer = http.request("GET", f"/v1/kv/{key}", params)
                names = answer.json() if answer.status == 200 else []
                if as_json:
                    print_json([str(name) for name in names])
                    return
                for name in names:
                    echo(name)
                return
            if recurse:
                answer = http.request("GET", f"/v1/kv/{key}", [*params, ("recurse", "")])
                entries = answer.json() if answer.status == 200 else []
                if as_json:
                    print_json([entry_json(entry) for entry in entries])
                    return
                for entry in entries:
                    if detailed:
                        _detailed(entry, as_base64)
                        echo("")
                        continue
                    value = _value(entry)
                    shown = (
                        base64.b64encode(value).decode()
                        if as_base64
                        else value.decode("utf-8", "replace")
                    )
                    echo(f"{entry['Key']}:{shown}")
                return
            answer = http.request("GET", f"/v1/kv/{key}", params)
        except HTTPClientError as exc:
            fail(f"Error querying Consul agent: {explain(exc)}")
    if answer.status == 404:
        fail(f"Error! No key exists at: {key}")
    entry = answer.json()[0]
    if as_json:
        print_json(entry_json(entry))
    elif detailed:
        _detailed(entry, as_base64)
    else:
        _write_value(_value(entry), as_base64)


def _data(data: str | None, as_base64: bool) -> bytes:
    if data is None:
        return b""
    if data == "-":
        raw = sys.stdin.buffer.read()
    elif data.startswith("@"):
        try:
            raw = Path(data[1:]).read_bytes()
        except OSError as exc:
            fail(f"Error! Failed to read file: {exc}")
    else:
        raw = data.encode("utf-8", "surrogateescape")
    if as_base64:
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError as exc:
            fail(f"Error! Cannot base 64 decode data: {exc}")
    return raw


@app.command("put")
def put(
    key: Annotated[str, typer.Argument(help="The key.")],
    data: Annotated[
        str | None, typer.Argument(help="The value; '-' reads stdin, '@FILE' a file.")
    ] = None,
    cas: Annotated[bool, typer.Option("--cas", help="Check-and-set on --modify-index.")] = False,
    modify_index: Annotated[
        int, typer.Option("--modify-index", help="With --cas: the expected ModifyIndex.")
    ] = 0,
    flags: Annotated[int, typer.Option("--flags", help="Unsigned integer flags.")] = 0,
    acquire: Annotated[bool, typer.Option("--acquire", help="Lock with --session.")] = False,
    release: Annotated[bool, typer.Option("--release", help="Unlock with --session.")] = False,
    session: Annotated[str, typer.Option("--session", help="The session to lock with.")] = "",
    as_base64: Annotated[bool, typer.Option("--base64", help="DATA is base64.")] = False,
    http_addr: HTTPAddr = None,
    token: Token = None,
    datacenter: Datacenter = "",
    timeout: HTTPTimeout = DEFAULT_TIMEOUT,
) -> None:
    """Write KEY (``consul kv put``)."""
    if key.startswith("/"):
        key = key[1:]
    if not key:
        fail("Error! Missing KEY argument")
    if (acquire or release) and not session:
        fail("Error! Missing -session (required with -acquire and -release)")
    params: list[tuple[str, str]] = []
    if flags:
        params.append(("flags", str(flags)))
    if cas:
        params.append(("cas", str(modify_index)))
    if acquire:
        params.append(("acquire", session))
    if release:
        params.append(("release", session))
    value = _data(data, as_base64)
    with client(http_addr, token, datacenter, timeout) as http:
        try:
            answer = http.request("PUT", f"/v1/kv/{key}", params, value)
        except HTTPClientError as exc:
            fail(f"Error! Failed writing data: {explain(exc)}")
    if answer.json() is not True:
        if cas:
            fail(f"Error! Did not write to {key}: CAS failed")
        if acquire:
            fail(f"Error! Did not acquire lock on {key}")
        fail(f"Error! Did not write to {key}")
    if acquire:
        echo(f"Success! Lock acquired on: {key}")
    elif release:
        echo(f"Success! Lock released on: {key}")
    else:
        echo(f"Success! Data written to: {key}")


@app.command("delete")
def delete(
    key: Annotated[str, typer.Argument(help="The key (or prefix, with --recurse).")] = "",
    recurse: Annotated[bool, typer.Option("--recurse", help="Every key under KEY.")] = False,
    cas: Annotated[bool, typer.Option("--cas", help="Check-and-set on --modify-index.")] = False,
    modify_index: Annotated[
        int, typer.Option("--modify-index", help="With --cas: the expected ModifyIndex.")
    ] = 0,
    http_addr: HTTPAddr = None,
    token: Token = None,
    datacenter: Datacenter = "",
    timeout: HTTPTimeout = DEFAULT_TIMEOUT,
) -> None:
    """Delete KEY (``consul kv delete``)."""
    if key.startswith("/"):
        key = key[1:]
    if not key and not recurse:
        fail("Error! Missing KEY argument")
    if cas and recurse:
        fail("Cannot specify both -cas and -recurse!")
    params: list[tuple[str, str]] = []
    if recurse:
        params.append(("recurse", ""))
    if cas:
        params.append(("cas", str(modify_index)))
    with client(http_addr, token, datacenter, timeout) as http:
        try:
            answer = http.request("DELETE", f"/v1/kv/{key}", params)
        except HTTPClientError as exc:
            fail(f"Error! Did not delete key {key}: {explain(exc)}")
    if answer.json() is not True:
        fail(f"Error! Did not delete key {key}: CAS failed")
    if recurse:
        echo(f"Success! Deleted keys with prefix: {key}")
    else:
        echo(f"Success! Deleted key: {key}")


__all__ = ["CONNECT_HINT", "HTTPTimeout", "app", "client", "entry_json", "explain"]
