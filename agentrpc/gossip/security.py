"""Memberlist's gossip encryption: the keyring and AES-GCM packet and stream envelopes.

Encrypted payload: ``[version][12-byte nonce][ciphertext || 16-byte GCM tag]``. Version 0
pads the plaintext with PKCS#7 to the AES block size (memberlist protocol 1); version 1 does
not pad (protocol 2 and later). Packets are authenticated with the label as additional data;
stream messages are wrapped as ``[10][u32 BE length][payload]`` and authenticated with those
first five bytes followed by the label.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agentrpc.gossip.messages import (
    MAX_PUSH_STATE_BYTES,
    GossipDecodeError,
    GossipError,
    MessageType,
)

__all__ = [
    "KEY_SIZES",
    "NONCE_SIZE",
    "STREAM_ENVELOPE_HEADER_SIZE",
    "TAG_SIZE",
    "DecryptError",
    "EncryptionVersion",
    "Keyring",
    "KeyringError",
    "decrypt_packet",
    "decrypt_payload",
    "decrypt_stream_message",
    "encrypt_overhead",
    "encrypt_packet",
    "encrypt_payload",
    "encrypt_stream_message",
    "encrypted_length",
    "encryption_version_for",
    "parse_key",
    "stream_envelope_length",
]

KEY_SIZES = (16, 24, 32)
"""AES-128, AES-192 and AES-256 key lengths."""
VERSION_SIZE = 1
NONCE_SIZE = 12
TAG_SIZE = 16
BLOCK_SIZE = 16
STREAM_ENVELOPE_HEADER_SIZE = 5
"""``[10][u32 length]`` in front of an encrypted stream message."""


class EncryptionVersion(enum.IntEnum):
    """The first byte of an encrypted payload."""

    PKCS7_PADDED = 0
    UNPADDED = 1


class KeyringError(GossipError, ValueError):
    """A key has the wrong size or encoding, or a keyring operation is not allowed."""


class DecryptError(GossipDecodeError):
    """An encrypted payload could not be opened with any key of the keyring."""


def parse_key(text: str) -> bytes:
    """Decode a base64 gossip key (as given to ``serf agent -encrypt``) and check its size."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyringError(f"gossip key is not valid base64: {exc}") from exc
    _check_key(key)
    return key


def _check_key(key: bytes) -> None:
    if len(key) not in KEY_SIZES:
        raise KeyringError(f"gossip key must be 16, 24 or 32 bytes, got {len(key)}")


class Keyring:
    """An ordered set of AES keys; the first (primary) encrypts, all are tried to decrypt.

    A keyring is immutable: :meth:`add_key`, :meth:`use_key` and :meth:`remove_key` return
    a new one, so a reference held by an in-flight encoder never changes under it.
    """

    __slots__ = ("_ciphers", "_keys")

    def __init__(self, primary: bytes, others: Iterable[bytes] = ()) -> None:
        keys: list[bytes] = []
        for key in (primary, *others):
            key = bytes(key)
            _check_key(key)
            if key not in keys:
                keys.append(key)
        self._keys = tuple(keys)
        self._ciphers = tuple(AESGCM(key) for key in keys)

    @classmethod
    def from_base64(cls, primary: str, others: Iterable[str] = ()) -> Keyring:
        """Build a keyring from base64 keys."""
        return cls(parse_key(primary), [parse_key(key) for key in others])

    @property
    def primary_key(self) -> bytes:
        """The key used to encrypt."""
        return self._keys[0]

    @property
    def keys(self) -> tuple[bytes, ...]:
        """All keys, primary first."""
        return self._keys

    def add_key(self, key: bytes) -> Keyring:
        """A keyring that also holds ``key`` (no change if it is already there)."""
        return Keyring(self._keys[0], (*self._keys[1:], key))

    def use_key(self, key: bytes) -> Keyring:
        """A keyring whose primary is ``key``, which must already be installed."""
        if key not in self._keys:
            raise KeyringError("requested key is not in the keyring")
        return Keyring(key, self._keys)

    def remove_key(self, key: bytes) -> Keyring:
        """A keyring without ``key``; the primary key cannot be removed."""
        if key == self._keys[0]:
            raise KeyringError("removing the primary key is not allowed")
        return Keyring(self._keys[0], (k for k in self._keys[1:] if k != key))

    def _primary_cipher(self) -> AESGCM:
        return self._ciphers[0]

    def _all_ciphers(self) -> tuple[AESGCM, ...]:
        return self._ciphers

    def __repr__(self) -> str:
        return f"Keyring(<{len(self._keys)} keys>)"


def encryption_version_for(protocol_version: int) -> EncryptionVersion:
    """The payload version memberlist uses at a given protocol version."""
    if protocol_version <= 1:
        return EncryptionVersion.PKCS7_PADDED
    return EncryptionVersion.UNPADDED


def encrypted_length(version: int, plaintext_len: int) -> int:
    """Size of the encrypted payload for a plaintext of ``plaintext_len`` bytes."""
    if version >= EncryptionVersion.UNPADDED:
        return VERSION_SIZE + NONCE_SIZE + plaintext_len + TAG_SIZE
    padding = BLOCK_SIZE - plaintext_len % BLOCK_SIZE
    return VERSION_SIZE + NONCE_SIZE + plaintext_len + padding + TAG_SIZE


def encrypt_overhead(version: int) -> int:
    """Worst-case bytes encryption adds to a packet (for UDP budget calculations)."""
    if version == EncryptionVersion.PKCS7_PADDED:
        return VERSION_SIZE + NONCE_SIZE + BLOCK_SIZE + TAG_SIZE
    return VERSION_SIZE + NONCE_SIZE + TAG_SIZE


def encrypt_payload(
    keyring: Keyring,
    plaintext: bytes,
    additional_data: bytes,
    *,
    version: int = EncryptionVersion.UNPADDED,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt with the primary key: ``[version][nonce][ciphertext+tag]``.

    ``nonce`` is random unless given (tests only: a nonce must never repeat under one key).
    """
    if version not in (EncryptionVersion.PKCS7_PADDED, EncryptionVersion.UNPADDED):
        raise KeyringError(f"unsupported encryption version {version}")
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise KeyringError(f"nonce must be {NONCE_SIZE} bytes")
    if version == EncryptionVersion.PKCS7_PADDED:
        pad = BLOCK_SIZE - len(plaintext) % BLOCK_SIZE
        plaintext = bytes(plaintext) + bytes((pad,)) * pad
    sealed = keyring._primary_cipher().encrypt(nonce, bytes(plaintext), additional_data or None)
    return bytes((version,)) + nonce + sealed


def decrypt_payload(keyring: Keyring, payload: bytes, additional_data: bytes) -> bytes:
    """Open ``[version][nonce][ciphertext+tag]`` with any key of the keyring."""
    if not payload:
        raise DecryptError("cannot decrypt an empty payload")
    version = payload[0]
    if version > EncryptionVersion.UNPADDED:
        raise DecryptError(f"unsupported encryption version {version}")
    if len(payload) < encrypted_length(version, 0):
        raise DecryptError(f"payload is too small to decrypt: {len(payload)} bytes")
    nonce = bytes(payload[VERSION_SIZE : VERSION_SIZE + NONCE_SIZE])
    sealed = bytes(payload[VERSION_SIZE + NONCE_SIZE :])
    aad = bytes(additional_data) or None
    for cipher in keyring._all_ciphers():
        try:
            plain = cipher.decrypt(nonce, sealed, aad)
        except InvalidTag:
            continue
        if version == EncryptionVersion.PKCS7_PADDED:
            return _strip_pkcs7(plain)
        return plain
    raise DecryptError("no installed keys could decrypt the message")


def _strip_pkcs7(plain: bytes) -> bytes:
    if not plain:
        raise DecryptError("padded plaintext is empty")
    pad = plain[-1]
    if not 1 <= pad <= BLOCK_SIZE or pad > len(plain):
        raise DecryptError(f"invalid PKCS#7 padding length {pad}")
    return plain[:-pad]


def encrypt_packet(
    keyring: Keyring,
    packet: bytes,
    *,
    label: bytes = b"",
    version: int = EncryptionVersion.UNPADDED,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt a UDP packet; the label (if any) is the additional data."""
    return encrypt_payload(keyring, packet, label, version=version, nonce=nonce)


def decrypt_packet(keyring: Keyring, packet: bytes, *, label: bytes = b"") -> bytes:
    """Decrypt a UDP packet (after its label header was removed)."""
    return decrypt_payload(keyring, packet, label)


_ENVELOPE_HEADER = struct.Struct(">BI")


def encrypt_stream_message(
    keyring: Keyring,
    message: bytes,
    *,
    label: bytes = b"",
    version: int = EncryptionVersion.UNPADDED,
    nonce: bytes | None = None,
) -> bytes:
    """Wrap one complete stream message as ``[10][u32 BE length][encrypted payload]``."""
    header = _ENVELOPE_HEADER.pack(MessageType.ENCRYPT, encrypted_length(version, len(message)))
    return header + encrypt_payload(keyring, message, header + label, version=version, nonce=nonce)


def stream_envelope_length(header: bytes, *, max_length: int = MAX_PUSH_STATE_BYTES) -> int:
    """Read the payload length from the five envelope header bytes and check the limit."""
    if len(header) < STREAM_ENVELOPE_HEADER_SIZE or header[0] != MessageType.ENCRYPT:
        raise DecryptError("not an encrypted stream envelope header")
    _, length = _ENVELOPE_HEADER.unpack_from(header)
    if length > max_length:
        raise DecryptError(f"remote node state is larger than limit ({length} > {max_length})")
    return int(length)


def decrypt_stream_message(
    keyring: Keyring,
    envelope: bytes,
    *,
    label: bytes = b"",
    max_length: int = MAX_PUSH_STATE_BYTES,
) -> bytes:
    """Open a whole ``[10][u32 length][payload]`` envelope and return the inner message."""
    header = bytes(envelope[:STREAM_ENVELOPE_HEADER_SIZE])
    length = stream_envelope_length(header, max_length=max_length)
    payload = envelope[STREAM_ENVELOPE_HEADER_SIZE:]
    if len(payload) != length:
        raise DecryptError(
            f"encrypted stream message has {len(payload)} payload bytes, header says {length}"
        )
    return decrypt_payload(keyring, bytes(payload), header + label)
