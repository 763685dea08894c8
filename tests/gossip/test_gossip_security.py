"""Tests for the keyring and the AES-GCM packet and stream envelopes."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings, strategies as st

from agentrpc.gossip.messages import MAX_PUSH_STATE_BYTES, MessageType
from agentrpc.gossip.security import (
    DecryptError,
    EncryptionVersion,
    Keyring,
    KeyringError,
    decrypt_packet,
    decrypt_payload,
    decrypt_stream_message,
    encrypt_overhead,
    encrypt_packet,
    encrypt_payload,
    encrypt_stream_message,
    encrypted_length,
    encryption_version_for,
    parse_key,
    stream_envelope_length,
)

KEY16 = bytes(range(16))
KEY24 = bytes(range(24))
KEY32 = bytes(range(32))
NONCE = bytes(range(100, 112))


# --------------------------------------------------------------------------------------------
# Keyring.


@pytest.mark.parametrize("key", [KEY16, KEY24, KEY32])
def test_keyring_accepts_aes_key_sizes(key: bytes) -> None:
    ring = Keyring(key)
    assert ring.primary_key == key
    assert ring.keys == (key,)


@pytest.mark.parametrize("size", [0, 1, 15, 17, 31, 33, 64])
def test_keyring_rejects_other_sizes(size: int) -> None:
    with pytest.raises(KeyringError, match=f"16, 24 or 32 bytes, got {size}"):
        Keyring(bytes(size))


def test_parse_key_base64() -> None:
    assert parse_key(base64.b64encode(KEY32).decode()) == KEY32
    assert parse_key("  " + base64.b64encode(KEY16).decode() + "\n") == KEY16
    with pytest.raises(KeyringError, match="not valid base64"):
        parse_key("not*base64!")
    with pytest.raises(KeyringError, match="got 3"):
        parse_key(base64.b64encode(b"abc").decode())


def test_keyring_operations_are_immutable_and_ordered() -> None:
    ring = Keyring(KEY16, [KEY32, KEY16, KEY32])
    assert ring.keys == (KEY16, KEY32)  # duplicates dropped, primary first
    added = ring.add_key(KEY24)
    assert added.keys == (KEY16, KEY32, KEY24)
    assert ring.keys == (KEY16, KEY32)
    switched = added.use_key(KEY24)
    assert switched.primary_key == KEY24
    assert set(switched.keys) == {KEY16, KEY24, KEY32}
    assert switched.remove_key(KEY16).keys == (KEY24, KEY32)
    with pytest.raises(KeyringError, match="primary"):
        switched.remove_key(KEY24)
    with pytest.raises(KeyringError, match="not in the keyring"):
        ring.use_key(KEY24)
    assert "keys" in repr(ring) and KEY16.hex() not in repr(ring)
    assert Keyring.from_base64(base64.b64encode(KEY16).decode()).keys == (KEY16,)


# --------------------------------------------------------------------------------------------
# Payloads.


def test_versions_and_lengths() -> None:
    assert encryption_version_for(1) == EncryptionVersion.PKCS7_PADDED
    assert encryption_version_for(2) == EncryptionVersion.UNPADDED
    assert encryption_version_for(5) == EncryptionVersion.UNPADDED
    assert encrypted_length(1, 10) == 1 + 12 + 10 + 16
    assert encrypted_length(0, 10) == 1 + 12 + 16 + 16
    assert encrypted_length(0, 16) == 1 + 12 + 32 + 16  # a full block of padding
    assert encrypt_overhead(1) == 29
    assert encrypt_overhead(0) == 45


def test_unpadded_payload_layout_is_aes_gcm_with_the_label_as_aad() -> None:
    out = encrypt_payload(Keyring(KEY16), b"hello", b"label", nonce=NONCE)
    assert out[0] == 1
    assert out[1:13] == NONCE
    assert out[13:] == AESGCM(KEY16).encrypt(NONCE, b"hello", b"label")
    assert len(out) == encrypted_length(1, 5)


def test_padded_payload_uses_pkcs7_before_sealing() -> None:
    out = encrypt_payload(Keyring(KEY32), b"hello", b"", version=0, nonce=NONCE)
    assert out[0] == 0
    opened = AESGCM(KEY32).decrypt(NONCE, out[13:], None)
    assert opened == b"hello" + bytes([11]) * 11
    assert decrypt_payload(Keyring(KEY32), out, b"") == b"hello"
    assert len(out) == encrypted_length(0, 5)


@settings(max_examples=100)
@given(
    plaintext=st.binary(max_size=200),
    label=st.binary(max_size=20),
    version=st.sampled_from([0, 1]),
    key=st.sampled_from([KEY16, KEY24, KEY32]),
)
def test_encrypt_decrypt_round_trip(
    plaintext: bytes, label: bytes, version: int, key: bytes
) -> None:
    ring = Keyring(key)
    packet = encrypt_packet(ring, plaintext, label=label, version=version)
    assert len(packet) == encrypted_length(version, len(plaintext))
    assert decrypt_packet(ring, packet, label=label) == plaintext
    envelope = encrypt_stream_message(ring, plaintext, label=label, version=version)
    assert decrypt_stream_message(ring, envelope, label=label) == plaintext


def test_every_key_is_tried_for_decryption() -> None:
    sealed = encrypt_packet(Keyring(KEY24), b"msg")
    assert decrypt_packet(Keyring(KEY16, [KEY32, KEY24]), sealed) == b"msg"


def test_wrong_key_wrong_label_or_tampering_fail() -> None:
    sealed = encrypt_packet(Keyring(KEY16), b"msg", label=b"a")
    with pytest.raises(DecryptError, match="no installed keys"):
        decrypt_packet(Keyring(KEY32), sealed, label=b"a")
    with pytest.raises(DecryptError, match="no installed keys"):
        decrypt_packet(Keyring(KEY16), sealed, label=b"b")
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(DecryptError):
        decrypt_packet(Keyring(KEY16), bytes(tampered), label=b"a")


def test_malformed_payloads() -> None:
    ring = Keyring(KEY16)
    with pytest.raises(DecryptError, match="empty"):
        decrypt_payload(ring, b"", b"")
    with pytest.raises(DecryptError, match="unsupported encryption version 2"):
        decrypt_payload(ring, b"\x02" + bytes(40), b"")
    with pytest.raises(DecryptError, match="too small"):
        decrypt_payload(ring, b"\x01" + bytes(20), b"")
    with pytest.raises(KeyringError):
        encrypt_payload(ring, b"x", b"", version=3)
    with pytest.raises(KeyringError):
        encrypt_payload(ring, b"x", b"", nonce=b"short")


def test_bad_pkcs7_padding_is_rejected() -> None:
    # Seal a plaintext whose last byte is not valid padding, as version 0.
    sealed = b"\x00" + NONCE + AESGCM(KEY16).encrypt(NONCE, b"abc" + bytes(13), None)
    with pytest.raises(DecryptError, match="padding"):
        decrypt_payload(Keyring(KEY16), sealed, b"")


# --------------------------------------------------------------------------------------------
# Stream envelope.


def test_stream_envelope_header_and_aad() -> None:
    ring = Keyring(KEY16)
    envelope = encrypt_stream_message(ring, b"\x06payload", label=b"lbl", nonce=NONCE)
    kind, length = struct.unpack_from(">BI", envelope)
    assert kind == MessageType.ENCRYPT
    assert length == len(envelope) - 5 == encrypted_length(1, 8)
    expected = AESGCM(KEY16).encrypt(NONCE, b"\x06payload", envelope[:5] + b"lbl")
    assert envelope[5 + 13 :] == expected
    with pytest.raises(DecryptError):  # the label is authenticated
        decrypt_stream_message(ring, envelope, label=b"other")


def test_stream_envelope_length_checks() -> None:
    ring = Keyring(KEY16)
    envelope = encrypt_stream_message(ring, b"abc")
    with pytest.raises(DecryptError, match="header says"):
        decrypt_stream_message(ring, envelope + b"x")
    big = struct.pack(">BI", 10, MAX_PUSH_STATE_BYTES + 1)
    with pytest.raises(DecryptError, match="larger than limit"):
        stream_envelope_length(big)
    assert stream_envelope_length(struct.pack(">BI", 10, 99)) == 99
    with pytest.raises(DecryptError, match="not an encrypted stream"):
        stream_envelope_length(b"\x09\x00\x00\x00\x01")


def test_decrypts_serfs_encrypted_stream_reply(
    capture: Callable[[str], bytes], manifest: dict[str, Any]
) -> None:
    # Known answer against Go's AES-GCM: serf's reply to our encrypted join push/pull.
    ring = Keyring(parse_key(manifest["encrypted"]["key"]))
    raw = capture("encrypted_pushpull_reply.bin")
    assert raw[0] == MessageType.ENCRYPT
    plain = decrypt_stream_message(ring, raw)
    assert plain[0] == MessageType.COMPRESS  # Go compresses, then encrypts
    assert raw[5] == EncryptionVersion.UNPADDED
    with pytest.raises(DecryptError):
        decrypt_stream_message(Keyring(KEY32), raw)


def test_decrypts_serfs_encrypted_packets(
    captured_packets: Callable[[str], list[bytes]], manifest: dict[str, Any]
) -> None:
    ring = Keyring(parse_key(manifest["encrypted"]["key"]))
    packets = captured_packets("encrypted_udp_packets.bin")
    assert packets
    for packet in packets:
        plain = decrypt_packet(ring, packet)
        assert plain[0] in (MessageType.PING, MessageType.COMPOUND, MessageType.COMPRESS, 12)
