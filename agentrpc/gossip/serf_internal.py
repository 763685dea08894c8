"""Serf's internal queries (``_serf_*``), answered sans-I/O as internal_query.go answers them.

* ``_serf_ping``: nothing to answer beyond the ack.
* ``_serf_conflict``: the payload names a node; we answer ``[6]`` + our ``Member`` of that name
  (nil when we know none), and stay silent when it is about ourselves.
* ``_serf_install-key``, ``_serf_use-key``, ``_serf_remove-key``: the payload is ``[7]`` +
  ``keyRequest{Key}``; we change our keyring and answer ``[8]`` + ``nodeKeyResponse`` with
  ``Result`` and serf's (memberlist's) error text in ``Message``.
* ``_serf_list-keys``: ``nodeKeyResponse`` with every key (base64) and the primary; a list
  too long for the response size limit is cut, with serf's ``truncated key list response``.

What a key query changes is returned, not applied: :func:`key_operation` gives the new
keyring, and the layer that owns memberlist installs it, writes the keyring file and only then
sends the response (whose ``Result`` says whether the file could be written, as serf's does).

Also here: the keyring file, a JSON list of base64 keys with the primary first, as serf and
Consul write it (:func:`keyring_file_text`, :func:`parse_keyring_file`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from agentrpc.gossip.messages import GossipDecodeError
from agentrpc.gossip.security import KEY_SIZES, Keyring, KeyringError
from agentrpc.gossip.serf_messages import (
    KeyRequest,
    NodeKeyResponse,
    WireMember,
    decode_key_request,
    encode_conflict_response,
    encode_key_response,
)
from agentrpc.log_protocol import DEBUG, ERR, INFO, WARN, clip

__all__ = [
    "CONFLICT_QUERY",
    "INSTALL_KEY_QUERY",
    "KEY_QUERIES",
    "LIST_KEYS_QUERY",
    "MIN_ENCODED_KEY_LENGTH",
    "PING_QUERY",
    "REMOVE_KEY_QUERY",
    "USE_KEY_QUERY",
    "KeyOutcome",
    "KeyringFileError",
    "conflict_answer",
    "fit_key_list",
    "internal_query_name",
    "key_operation",
    "keyring_file_text",
    "parse_keyring_file",
]

PING_QUERY: Final = "ping"
CONFLICT_QUERY: Final = "conflict"
INSTALL_KEY_QUERY: Final = "install-key"
USE_KEY_QUERY: Final = "use-key"
REMOVE_KEY_QUERY: Final = "remove-key"
LIST_KEYS_QUERY: Final = "list-keys"
KEY_QUERIES: Final = (INSTALL_KEY_QUERY, USE_KEY_QUERY, REMOVE_KEY_QUERY, LIST_KEYS_QUERY)
MIN_ENCODED_KEY_LENGTH: Final = 25
"""Serf's estimate of one base64 key's share of a list-keys response (bounds the list)."""

_PREFIX: Final = "_serf_"
_NOT_ENABLED: Final = "No keyring to modify (encryption not enabled)"
_EMPTY: Final = "Keyring is empty (encryption not enabled)"
_BAD_SIZE: Final = "key size must be 16, 24 or 32 bytes"
_NOT_IN_RING: Final = "Requested key is not in the keyring"
_REMOVE_PRIMARY: Final = "Removing the primary key is not allowed"
_FAILED: Final = {
    INSTALL_KEY_QUERY: "Failed to install key",
    USE_KEY_QUERY: "Failed to change primary key",
    REMOVE_KEY_QUERY: "Failed to remove key",
}

Line = tuple[int, str]
"""A log line (level, text) for the caller's ``serf`` logger."""


def internal_query_name(name: str) -> str:
    """``_serf_`` + ``name``."""
    return _PREFIX + name


def conflict_answer(
    payload: bytes, local_name: str, lookup: Callable[[str], WireMember | None]
) -> tuple[bytes | None, list[Line]]:
    """The response to ``_serf_conflict`` about the node named in ``payload``: None (no
    response) when that is ourselves, else our view of it."""
    node = payload.decode("utf-8", "surrogateescape")
    if node == local_name:
        return None, []
    lines: list[Line] = [(DEBUG, f"Got conflict resolution query for '{clip(node)}'")]
    return encode_conflict_response(lookup(node)), lines


@dataclass(frozen=True, slots=True)
class KeyOutcome:
    """What a key query does here: the new keyring (None: unchanged), the response to send
    once it is in place, and the log lines."""

    keyring: Keyring | None
    response: NodeKeyResponse
    lines: tuple[Line, ...]

    @property
    def changes_keyring(self) -> bool:
        return self.keyring is not None


def key_operation(operation: str, payload: bytes, keyring: Keyring | None) -> KeyOutcome:
    """Answer a key query (``operation`` is one of :data:`KEY_QUERIES`) against ``keyring``
    (None: encryption is off)."""
    if operation == LIST_KEYS_QUERY:
        if keyring is None:
            return KeyOutcome(None, NodeKeyResponse(message=_EMPTY), ((ERR, _EMPTY),))
        keys = tuple(base64.b64encode(key).decode() for key in keyring.keys)
        return KeyOutcome(
            None,
            NodeKeyResponse(result=True, keys=keys, primary_key=keys[0]),
            ((INFO, "Received list-keys query"),),
        )
    try:
        request = decode_key_request(payload)
    except GossipDecodeError as exc:
        line = (ERR, f"Failed to decode key request: {clip(exc)}")
        return KeyOutcome(None, NodeKeyResponse(), (line,))
    if keyring is None:
        return KeyOutcome(None, NodeKeyResponse(message=_NOT_ENABLED), ((ERR, _NOT_ENABLED),))
    received: Line = (INFO, f"Received {operation} query")
    try:
        new = _apply(operation, keyring, request)
    except KeyringError as exc:
        message = str(exc)
        failed = (ERR, f"{_FAILED[operation]}: {message}")
        return KeyOutcome(None, NodeKeyResponse(message=message), (received, failed))
    return KeyOutcome(new, NodeKeyResponse(result=True), (received,))


def _apply(operation: str, keyring: Keyring, request: KeyRequest) -> Keyring:
    """The keyring after the operation; :class:`KeyringError` with memberlist's text."""
    key = request.key
    if operation == INSTALL_KEY_QUERY:
        if len(key) not in KEY_SIZES:
            raise KeyringError(_BAD_SIZE)
        return keyring.add_key(key)
    if operation == USE_KEY_QUERY:
        if key not in keyring.keys:
            raise KeyringError(_NOT_IN_RING)
        return keyring.use_key(key)
    if operation == REMOVE_KEY_QUERY:
        if key == keyring.primary_key:
            raise KeyringError(_REMOVE_PRIMARY)
        return keyring.remove_key(key)
    raise KeyringError(f"unknown key operation {operation!r}")


def fit_key_list(
    response: NodeKeyResponse, encoded_size: Callable[[bytes], int], limit: int
) -> tuple[NodeKeyResponse | None, list[Line]]:
    """Cut a list-keys response until its query response fits ``limit`` bytes (serf's
    ``keyListResponseWithCorrectSize``); ``encoded_size`` gives the size of the complete
    query response for a payload. None when even an empty list does not fit."""
    actual = len(response.keys)
    most = limit // MIN_ENCODED_KEY_LENGTH
    current = response
    for count in range(most, -1, -1):
        if encoded_size(encode_key_response(current)) <= limit:
            lines: list[Line] = []
            if actual > count:
                lines.append((WARN, current.message))
            return current, lines
        current = replace(
            current,
            keys=response.keys[:count],
            message=f"truncated key list response, showing first {count} of {actual} keys",
        )
    return None, [(ERR, "Failed to truncate response so that it fits into message")]


# --------------------------------------------------------------------------------------------
# The keyring file.


class KeyringFileError(ValueError):
    """A keyring file that cannot be read as a list of keys."""


def keyring_file_text(keyring: Keyring) -> str:
    """The file's contents: a JSON list of base64 keys, primary first, indented as Go's
    ``json.MarshalIndent(keys, "", "  ")``."""
    return json.dumps([base64.b64encode(key).decode() for key in keyring.keys], indent=2)


def parse_keyring_file(text: str) -> Keyring:
    """The keyring a keyring file holds (primary first)."""
    try:
        keys = json.loads(text)
    except ValueError as exc:
        raise KeyringFileError(f"Failed to decode keys: {exc}") from None
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise KeyringFileError("Failed to decode keys: expected a JSON list of strings")
    if not keys:
        raise KeyringFileError("no keys present in keyring file")
    raw: list[bytes] = []
    for key in keys:
        try:
            decoded = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KeyringFileError(f"Failed to decode key from file: {exc}") from None
        if len(decoded) not in KEY_SIZES:
            raise KeyringFileError(f"Failed to decode key from file: {_BAD_SIZE}")
        raw.append(decoded)
    return Keyring(raw[0], raw[1:])
