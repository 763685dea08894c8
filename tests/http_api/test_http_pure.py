"""The HTTP API's sans-I/O parts by property: Go's JSON encoding, the query-string rules,
user events' serf payload and index, service and check definitions."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from agentrpc.catalog.structs import NodeService, QueryMeta
from agentrpc.http_api import go_json
from agentrpc.http_api.events import (
    UserEvent,
    UserEventError,
    decode_payload,
    encode_payload,
    should_process,
    uuid_to_uint64,
    validate,
)
from agentrpc.http_api.kv_endpoints import encode_query
from agentrpc.http_api.messages import HTTPError, Request, meta_headers, parse_query, query_options
from agentrpc.local_state.definitions import DefinitionError, parse_check, parse_service

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(json_values)
def test_go_json_round_trips_and_escapes_like_go(value: object) -> None:
    encoded = go_json.dumps(value)
    assert json.loads(encoded) == value
    assert not {b"<", b">", b"&"} & {bytes([b]) for b in encoded}
    assert b"\xe2\x80\xa8" not in encoded  # U+2028 escaped
    assert json.loads(go_json.dumps(value, pretty=True)) == value


def test_go_json_bytes_that_were_not_utf8_become_replacement_characters() -> None:
    assert go_json.dumps("a\udcffb") == '"a\ufffdb"'.encode()
    assert go_json.dumps({"k": "<x>&"}) == b'{"k":"\\u003cx\\u003e\\u0026"}'


@given(
    st.dictionaries(st.text(min_size=1), st.lists(st.text(), min_size=1, max_size=3), max_size=5)
)
def test_query_strings_round_trip_through_go_s_encoding(query: dict[str, list[str]]) -> None:
    assert parse_query(encode_query(query)) == query


def request(query: str) -> Request:
    return Request("GET", "/v1/kv/k", parse_query(query), {})


@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.sampled_from(["9.997s", "1m30s", "250ms", "0"]),
)
def test_wait_and_index_parse_as_go_does(index: int, wait: str) -> None:
    options = query_options(request(f"index={index}&wait={wait}&stale"), "tok")
    assert options.min_query_index == index and options.allow_stale
    assert options.token == "tok"


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("wait=5", "Invalid wait time"),
        ("wait=x", "Invalid wait time"),
        ("index=-1", "Invalid index"),
        ("index=18446744073709551616", "Invalid index"),
        ("stale=&consistent=1", "Cannot specify ?stale with ?consistent, conflicting semantics."),
    ],
)
def test_bad_query_options_are_400_with_the_reference_text(query: str, text: str) -> None:
    with pytest.raises(HTTPError) as caught:
        query_options(request(query), "")
    assert (caught.value.status, caught.value.text) == (400, text)


def test_token_precedence_query_then_header_then_default() -> None:
    r = Request("GET", "/", parse_query("token=q"), {"x-consul-token": "h"})
    assert r.token("d") == "q"
    assert Request("GET", "/", {}, {"x-consul-token": "h"}).token("d") == "h"
    assert Request("GET", "/", {}, {}).token("d") == "d"


@given(
    st.integers(min_value=0, max_value=2**63),
    st.integers(min_value=-(2**40), max_value=2**50),
    st.booleans(),
)
def test_meta_headers_never_index_0_nor_negative_contact(
    index: int, contact: int, leader: bool
) -> None:
    headers = dict(meta_headers(QueryMeta(index, contact, leader)))
    assert int(headers["X-Consul-Index"]) == max(index, 1)
    assert int(headers["X-Consul-LastContact"]) == max(contact, 0) // 1_000_000
    assert headers["X-Consul-KnownLeader"] == ("true" if leader else "false")


events = st.builds(
    UserEvent,
    id=st.uuids().map(str),
    name=st.text(min_size=1, max_size=20),
    payload=st.none() | st.binary(min_size=1, max_size=64),
    node_filter=st.sampled_from(["", "node-.*"]),
    service_filter=st.sampled_from(["", "web"]),
    version=st.just(1),
)


@given(events, st.integers(min_value=0, max_value=2**32))
def test_user_event_payload_round_trips(event: UserEvent, ltime: int) -> None:
    decoded = decode_payload(encode_payload(event), ltime)
    assert decoded == UserEvent(
        event.id, event.name, event.payload, event.node_filter, event.service_filter, "", 1, ltime
    )


def test_user_event_rules() -> None:
    with pytest.raises(UserEventError, match="Cannot provide tag filter without service filter"):
        validate(UserEvent(name="x", tag_filter="t"))
    with pytest.raises(UserEventError, match="Invalid service filter"):
        validate(UserEvent(name="x", service_filter="("))
    web = [NodeService("w", "web", tags=("blue",))]
    assert should_process(UserEvent(name="x", service_filter="web", tag_filter="bl"), "n", web)
    assert not should_process(UserEvent(name="x", service_filter="web", tag_filter="red"), "n", web)
    assert not should_process(UserEvent(name="x", node_filter="^other$"), "n", web)
    assert not should_process(UserEvent(name="x", version=2), "n", web)
    assert uuid_to_uint64("00000000-0000-0001-0000-000000000001") == 0
    assert uuid_to_uint64("00000000-0000-0001-0000-000000000003") == 2


def test_service_definitions_as_py_consul_and_patroni_send_them() -> None:
    definition = parse_service(
        {
            "name": "postgresql",
            "id": "pg1",
            "tags": ["master"],
            "port": 5432,
            "enabletagoverride": True,
            "checks": [
                {"ttl": "30s"},
                {
                    "http": "http://127.0.0.1:8008/",
                    "interval": "5s",
                    "DeregisterCriticalServiceAfter": "1m",
                    "header": {"A": ["b"]},
                },
            ],
        }
    )
    service = definition.service
    assert (service.id, service.service, service.tags, service.port) == (
        "pg1",
        "postgresql",
        ("master",),
        5432,
    )
    assert service.enable_tag_override
    first, second = definition.checks
    assert (first.check_id, first.name, first.ttl_ns) == (
        "service:pg1:1",
        "Service 'postgresql' check",
        30 * 10**9,
    )
    assert (second.check_id, second.interval_ns, second.deregister_critical_after_ns) == (
        "service:pg1:2",
        5 * 10**9,
        60 * 10**9,
    )
    assert second.header == {"A": ["b"]}
    single = parse_service({"Name": "x", "Check": {"TTL": "10s"}})
    assert single.checks[0].check_id == "service:x"
    check = parse_check({"name": "disk", "ttl": "5s", "serviceid": "x", "notes": "n"})
    assert (check.check_id, check.service_id, check.notes) == ("disk", "x", "n")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"port": 1}, "Missing service name"),
        (
            {"name": "x", "check": {"interval": "10s"}},
            "Must provide TTL or Script/DockerContainerID/HTTP/TCP and Interval",
        ),
        (
            {"name": "x", "check": {"ttl": "1s", "status": "up"}},
            "Status for checks must 'passing', 'warning', 'critical'",
        ),
        (
            {"name": "x", "check": {"ttl": "1y"}},
            "Request decode failed: time: unknown unit y in duration 1y",
        ),
    ],
)
def test_service_definition_errors(body: dict, text: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_service(body)
    assert (caught.value.status, str(caught.value)) == (400, text)
