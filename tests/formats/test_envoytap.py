"""Envoy tap traces -> Observations, from JSON written by the real protobuf classes too."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from envoy.data.tap.v3 import wrapper_pb2
from google.protobuf import json_format

from meshward.core.observation import Observation
from meshward.formats import EntryError, detect_format, read_observations
from meshward.formats.envoytap import TraceSegmentAssembler, observations_from_trace
from tests.support.samples import tap_trace


def _proto_trace() -> wrapper_pb2.TraceWrapper:
    w = wrapper_pb2.TraceWrapper()
    t = w.http_buffered_trace
    for k, v in [
        (":authority", "reviews.bookinfo.svc.cluster.local:9080"),
        (":path", "/reviews/0?lang=en"),
        (":method", "POST"),
        ("content-type", "application/json"),
        ("content-length", "9"),
        (
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/bookinfo/sa/reviews;"
            "URI=spiffe://cluster.local/ns/bookinfo/sa/productpage",
        ),
    ]:
        h = t.request.headers.add()
        h.key, h.value = k, v
        if k == "content-length":  # Envoy writes non-UTF-8-safe values as raw_value bytes
            h.value, h.raw_value = "", v.encode()
    t.request.body.as_bytes = b'{"a": 1}'
    t.request.body.truncated = True
    t.request.headers_received_time.FromJsonString("2026-11-24T10:00:00.123456789Z")
    h = t.response.headers.add()
    h.key, h.value = ":status", "503"
    t.downstream_connection.remote_address.socket_address.address = "10.0.0.7"
    t.downstream_connection.remote_address.socket_address.port_value = 41000
    t.downstream_connection.local_address.socket_address.address = "10.0.0.9"
    t.downstream_connection.local_address.socket_address.port_value = 9080
    return w


@pytest.mark.parametrize("preserve", [True, False], ids=["proto-names", "camelCase"])
def test_trace_from_protobuf_json(preserve: bool) -> None:
    doc = json.loads(
        json_format.MessageToJson(_proto_trace(), preserving_proto_field_name=preserve)
    )
    [o] = observations_from_trace(doc, seen_by="envoy-tap")
    assert o.seen_by == "envoy-tap"
    assert (o.method, o.path, o.query) == ("POST", "/reviews/0", "lang=en")
    assert o.authority == "reviews.bookinfo.svc.cluster.local:9080"
    assert o.destination.key == "bookinfo/reviews"
    assert (o.destination.ip, o.destination.port) == ("10.0.0.9", 9080)
    assert o.source.key == "bookinfo/productpage" and o.source.ip == "10.0.0.7"
    assert o.body == b'{"a": 1}' and o.body_truncated and o.body_size == 9
    assert o.header("content-length") == "9"
    assert o.status == 503
    assert o.time == pytest.approx(1795514400.123457)


def test_as_string_body_and_minimal_trace() -> None:
    [o] = observations_from_trace(tap_trace("put", "/x", body=b"hello", as_string=True))
    assert o.method == "PUT" and o.body == b"hello" and o.body_size == 5 and o.query == ""
    assert o.source.key == "unknown" and o.destination.key == "shop/api"
    [o] = observations_from_trace(
        {
            "http_buffered_trace": {
                "request": {
                    "headers": [
                        {"key": ":method", "value": "GET"},
                        {"key": ":path", "value": "/"},
                        {"key": "host", "value": "10.9.8.7"},
                    ]
                }
            }
        }
    )
    assert o.destination.ip == "10.9.8.7" and o.status is None


def test_grpc_trace() -> None:
    [o] = observations_from_trace(
        tap_trace("POST", "/shop.v1.Cart/AddItem", headers={"content-type": "application/grpc"})
    )
    assert o.protocol == "grpc" and (o.grpc_service, o.grpc_method) == ("shop.v1.Cart", "AddItem")


@pytest.mark.parametrize(
    ("obj", "msg"),
    [
        ([], "trace must be an object"),
        ({"foo": 1}, "not an Envoy TraceWrapper"),
        ({"socket_buffered_trace": {}}, "socket traces are not supported"),
        ({"http_streamed_trace_segment": {"trace_id": 1}}, "streamed segments must be assembled"),
        ({"http_buffered_trace": {"request": {"headers": []}}}, "no request headers"),
        (
            {"http_buffered_trace": {"request": {"headers": [{"key": ":path", "value": "/"}]}}},
            "no :method",
        ),
        (
            {"http_buffered_trace": {"request": {"headers": [{"key": ":method", "value": "GET"}]}}},
            "no :path",
        ),
        ({"http_buffered_trace": {"request": {"headers": "x"}}}, "must be a list"),
        ({"http_buffered_trace": {"request": {"headers": [{"value": "x"}]}}}, "string key"),
        ({"http_buffered_trace": {"request": {"body": {"as_bytes": "!!"}}}}, "not base64"),
        ({"http_buffered_trace": []}, "must be an object"),
    ],
)
def test_bad_traces(obj: object, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        observations_from_trace(obj)


def test_json_lines_bad_line_skipped(tmp_path: Path) -> None:
    p = tmp_path / "taps.jsonl"
    lines = [
        json.dumps(tap_trace("GET")),
        "{not json",
        "",
        json.dumps({"x": 1}),
        json.dumps(tap_trace("POST", body=b"{}")),
        '{"http_buffered_trace": {"requ',
    ]
    p.write_text("\n".join(lines) + "\n")
    assert detect_format(p.read_bytes()) == "tap-lines"
    items = list(read_observations([str(p)]))
    assert [type(i).__name__ for i in items] == [
        "Observation",
        "EntryError",
        "EntryError",
        "Observation",
        "EntryError",
    ]
    assert [i.entry for i in items if isinstance(i, EntryError)] == [2, 4, 6]
    assert str(items[1]).startswith(f"{p}: line 2: invalid JSON")


def test_one_pretty_trace_per_file_and_concatenated(tmp_path: Path) -> None:
    p = tmp_path / "t_123.json"
    p.write_text(json.dumps(tap_trace("DELETE"), indent=1))
    assert detect_format(p.read_bytes()) == "tap"
    [o] = list(read_observations([str(p)]))
    assert isinstance(o, Observation) and o.method == "DELETE"
    p.write_text(
        json.dumps(tap_trace("GET"), indent=2) + "\n" + json.dumps(tap_trace("PUT"), indent=2)
    )
    assert [o.method for o in read_observations([str(p)])] == ["GET", "PUT"]
    p.write_text(json.dumps(tap_trace("GET"), indent=2)[:-30])
    items = list(read_observations([str(p)]))
    assert len(items) == 1 and "truncated" in str(items[0])


def test_streamed_segments_assembled(tmp_path: Path) -> None:
    def seg(tid: int, **piece: object) -> str:
        return json.dumps({"http_streamed_trace_segment": {"trace_id": str(tid), **piece}})

    req = tap_trace("POST", "/a?q=1")["http_buffered_trace"]["request"]["headers"]
    lines = [
        seg(1, request_headers={"headers": req}),
        seg(
            2,
            request_headers={
                "headers": tap_trace("GET", "/b")["http_buffered_trace"]["request"]["headers"]
            },
        ),
        seg(1, request_body_chunk={"as_bytes": base64.b64encode(b'{"a":').decode()}),
        seg(1, request_body_chunk={"as_string": "1}"}),
        seg(1, response_headers={"headers": [{"key": ":status", "value": "200"}]}),
        seg(3, response_headers={"headers": [{"key": ":status", "value": "200"}]}),
    ]
    p = tmp_path / "streamed.jsonl"
    p.write_text("\n".join(lines))
    items = list(read_observations([str(p)]))
    assert isinstance(items[0], Observation) and items[0].body == b'{"a":1}'
    assert items[0].status == 200 and items[0].query == "q=1"
    assert isinstance(items[1], Observation) and items[1].path == "/b"
    assert isinstance(items[2], EntryError) and "streamed trace 3" in str(items[2])


def test_stream_assembler_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import meshward.formats.envoytap as tap

    monkeypatch.setattr(tap, "MAX_PENDING_STREAMS", 3)
    a = TraceSegmentAssembler()
    hdrs = tap_trace()["http_buffered_trace"]["request"]["headers"]
    out = []
    for i in range(10):
        out += a.add({"trace_id": i, "request_headers": {"headers": hdrs}})
    assert len(out) == 7 and len(list(a.finish())) == 3
    for i in range(5):  # response-only segments of unknown traces: evicted, counted, no crash
        out += a.add({"trace_id": f"r{i}", "response_headers": {"headers": []}})
    assert len(out) == 7 and a.dropped == 2


def test_stream_assembler_emits_on_response_headers() -> None:
    """Live use (admin /tap): a request comes out as soon as its response starts."""
    a = TraceSegmentAssembler("envoy-tap")
    hdrs = tap_trace("POST", "/x")["http_buffered_trace"]["request"]["headers"]
    assert a.add({"trace_id": "7", "request_headers": {"headers": hdrs}}) == []
    assert a.add({"trace_id": "7", "request_body_chunk": {"as_string": "ab"}}) == []
    [o] = a.add(
        {"trace_id": "7", "response_headers": {"headers": [{"key": ":status", "value": "204"}]}}
    )
    assert (o.seen_by, o.method, o.body, o.status) == ("envoy-tap", "POST", b"ab", 204)
    assert a.add({"trace_id": "7", "response_body_chunk": {"as_string": "late"}}) == []
    assert list(a.finish()) == []


def test_detect_rejects_other_json() -> None:
    for data, msg in [
        (b'{"kind": "Pod"}', "first key 'kind'"),
        (b"[]", "not a JSON object"),
        (b"", "empty"),
        (b"{oops", "invalid JSON"),
    ]:
        with pytest.raises(ValueError, match=msg):
            detect_format(data)


def test_json_lines_with_broken_first_line(tmp_path: Path) -> None:
    p = tmp_path / "cut.jsonl"
    p.write_text("{oops\n" + json.dumps(tap_trace("GET")) + "\n" + json.dumps(tap_trace("PUT")))
    items = list(read_observations([str(p)]))
    assert isinstance(items[0], EntryError) and items[0].entry == 1
    assert [o.method for o in items[1:]] == ["GET", "PUT"]  # type: ignore[union-attr]
