"""Serf's key manager, querying side, sans-I/O: the key queries' payloads and the aggregation.

``serf keys`` and ``consul keyring`` change or list the keys of a whole cluster by running one
internal query (``_serf_install-key``, ``_serf_use-key``, ``_serf_remove-key``,
``_serf_list-keys``) and folding every node's ``nodeKeyResponse`` into one result, as serf's
keymanager.go does: how many nodes memberlist knows (``NumNodes``), how many answered
(``NumResp``) and failed (``NumErr``), each node's message, and how many nodes hold each key
(and each primary key). The operation fails with ``N/M nodes reported failure`` when any
node failed, else with ``N/M nodes reported success`` when not all answered.
"""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass, field
from typing import Final

from agentrpc.gossip.messages import GossipDecodeError
from agentrpc.gossip.serf_internal import LIST_KEYS_QUERY
from agentrpc.gossip.serf_messages import (
    KeyRequest,
    SerfMessageType,
    decode_key_response,
    encode_key_request,
)
from agentrpc.log_protocol import WARN

__all__ = ["KeyAggregator", "KeyRequestError", "KeyResponse", "key_request_payload"]

_BASE64: Final = frozenset(string.ascii_letters + string.digits + "+/")


class KeyRequestError(ValueError):
    """A key the operator gave that cannot be sent (Go's base64 error text)."""


def _go_base64(text: str) -> bytes:
    """Go's ``base64.StdEncoding.DecodeString``, with its error text."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    offset = len(text)
    for index, char in enumerate(text):
        if char == "=":
            offset = index
            break
        if char not in _BASE64:
            offset = index
            break
    raise KeyRequestError(f"illegal base64 data at input byte {offset}")


def key_request_payload(operation: str, key: str) -> bytes:
    """The payload of a key query: ``[7]`` + ``keyRequest{Key}`` with the raw key (empty for
    list-keys)."""
    raw = b"" if operation == LIST_KEYS_QUERY and not key else _go_base64(key)
    return encode_key_request(KeyRequest(raw))


@dataclass(slots=True)
class KeyResponse:
    """Serf's ``KeyResponse``: the cluster's answer to one key operation."""

    messages: dict[str, str] = field(default_factory=dict)
    """Node name to the message it sent (errors, and warnings such as a truncated list)."""
    num_nodes: int = 0
    num_resp: int = 0
    num_err: int = 0
    keys: dict[str, int] = field(default_factory=dict)
    """Base64 key to how many nodes hold it."""
    primary_keys: dict[str, int] = field(default_factory=dict)
    """Base64 primary key to how many nodes use it (serf 0.9; older nodes count under "")."""
    error: str = ""
    """Why the operation failed ("" when every node answered with success)."""


class KeyAggregator:
    """Folds the responses of one key query into a :class:`KeyResponse`."""

    __slots__ = ("lines", "result")

    def __init__(self, num_nodes: int) -> None:
        self.result = KeyResponse(num_nodes=num_nodes)
        self.lines: list[tuple[int, str]] = []
        """Warnings serf logs while folding (a node's message with a successful result)."""

    @property
    def complete(self) -> bool:
        """Every node memberlist knew of has answered."""
        return self.result.num_resp >= self.result.num_nodes

    def add(self, from_node: str, payload: bytes) -> None:
        """One node's response (a response, not an ack)."""
        result = self.result
        result.num_resp += 1
        if not payload or payload[0] != SerfMessageType.KEY_RESPONSE:
            result.messages[from_node] = f"Invalid key query response type: {list(payload)}"
            result.num_err += 1
            return
        try:
            response = decode_key_response(payload)
        except GossipDecodeError:
            result.messages[from_node] = f"Failed to decode key query response: {list(payload)}"
            result.num_err += 1
            return
        if not response.result:
            result.messages[from_node] = response.message
            result.num_err += 1
        if response.result and response.message:
            result.messages[from_node] = response.message
            self.lines.append((WARN, response.message))
        for key in response.keys:
            result.keys[key] = result.keys.get(key, 0) + 1
        result.primary_keys[response.primary_key] = (
            result.primary_keys.get(response.primary_key, 0) + 1
        )

    def finish(self) -> KeyResponse:
        """The result, with serf's error when some node failed or did not answer."""
        result = self.result
        if result.num_err:
            result.error = f"{result.num_err}/{result.num_nodes} nodes reported failure"
        elif result.num_resp != result.num_nodes:
            result.error = f"{result.num_resp}/{result.num_nodes} nodes reported success"
        return result
