"""Hostile but well-formed ext_proc streams through the whole Envoy tap path: the Process handler
(with a stand-in for the gRPC context), stream assembly within its TapLimits, the both-ends join and
the pipeline with the real threat detectors in every mode; and random bytes through the admin
/tap stream splitter and the tap trace parser. The tap is how observability-mode sidecars report
traffic: an exception loses the request unjudged, so none may escape, and no buffer may grow past
its bound whatever the peer sends."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import math
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.app.pipeline import Pipeline
from meshward.core.engine import Engine
from meshward.core.observation import Observation
from meshward.runtime.grpcwire import Undecodable
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.admin import AdminTapError, TapStats, TraceSplitter, stream_observations
from meshward.tap.envoy.assemble import _ATTRIBUTES, ExtProcAssembler, StreamContext, TapLimits
from meshward.tap.envoy.extproc import TapService, _deserialize
from meshward.tap.envoy.join import Joiner
from tests.support.serve import tap_messages

PR = external_processor_pb2.ProcessingRequest
# MESHWARD_FUZZ_SCALE=50 runs fifty times the examples (when hunting; the default stays quick)
SCALE = int(os.environ.get("MESHWARD_FUZZ_SCALE", "1"))

# numbers that `isdigit()` accepts but `int()` does not, and past int()'s 4300-digit limit
NUMBERS = [
    "200",
    "0",
    "-1",
    "abc",
    "99999",
    "",
    " 200",
    "2.5",
    "\u00b2",
    "\u0661\u0662",
    "9" * 5000,
    "1e3",
    "0x10",
]
HEADER_NAMES = [
    ":method",
    ":path",
    ":authority",
    ":scheme",
    ":status",
    "host",
    "content-type",
    "content-encoding",
    "content-length",
    "x-request-id",
    "cookie",
    "user-agent",
    "x-forwarded-client-cert",
    "te",
    "grpc-status",
    "",
    ":",
    "X-Request-Id",
]
CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "application/grpc",
    "application/grpc+proto",
    "text/xml",
    "application/octet-stream",
    "",
    ";;",
]
VALUES: list[str] = [
    *NUMBERS,
    *CONTENT_TYPES,
    "GET",
    "POST",
    "",
    "/",
    "/a?b=1",
    "?",
    "//x",
    "gzip",
    "deflate",
    "br, gzip",
    "rid-1",
    "rid-2",
    "api.shop",
    "api.shop:x",
    "[::1]:80",
    "By=x;URI=spiffe://cluster.local/ns/shop/sa/web",
    "/pkg.Svc/Method",
    "' or 1=1 --",
    "<script>",
    "${jndi:ldap://x}",
]
ATTRIBUTE_NAMES = [
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "connection.uri_san_peer_certificate",
    "connection.uri_san_local_certificate",
    "request.protocol",
    "request.id",
    "",
]


def _headers(draw: st.DrawFn, hmap: base_pb2.HeaderMap, max_size: int = 12) -> None:
    for _ in range(draw(st.integers(0, max_size))):
        key = draw(st.sampled_from(HEADER_NAMES) | st.text(max_size=12))
        if draw(st.booleans()):
            raw = draw(st.sampled_from(VALUES).map(str.encode) | st.binary(max_size=40))
            hmap.headers.add(key=key, raw_value=raw)
        else:
            hmap.headers.add(key=key, value=draw(st.sampled_from(VALUES) | st.text(max_size=40)))
    if draw(st.integers(0, 20)) == 0:  # a huge list
        n = draw(st.integers(100, 400))
        for i in range(n):
            hmap.headers.add(key=f"x-h{i}", raw_value=b"v" * draw(st.sampled_from([0, 10, 300])))


_plain_value = st.one_of(
    st.text(max_size=30).map(lambda s: struct_pb2.Value(string_value=s)),
    st.sampled_from(VALUES).map(lambda s: struct_pb2.Value(string_value=s)),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -5.0, 0.5, 65535.0, 2.0**64]).map(
        lambda f: struct_pb2.Value(number_value=f)
    ),
    st.floats().map(lambda f: struct_pb2.Value(number_value=f)),
    st.booleans().map(lambda b: struct_pb2.Value(bool_value=b)),
    st.just(struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)),
    st.just(
        struct_pb2.Value(
            list_value=struct_pb2.ListValue(values=[struct_pb2.Value(string_value="x")])
        )
    ),
)


def _struct(draw: st.DrawFn, s: struct_pb2.Struct, max_size: int = 6) -> None:
    for _ in range(draw(st.integers(0, max_size))):
        name = draw(st.sampled_from(ATTRIBUTE_NAMES) | st.text(max_size=15))
        if draw(st.integers(0, 5)) == 0:
            s.fields[name].struct_value.fields["inner"].string_value = "x"
        else:
            s.fields[name].CopyFrom(draw(_plain_value))


def _body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["raw", "json", "gzip", "bad-gzip", "grpc", "big", "empty"]))
    if kind == "json":
        return json.dumps(
            draw(st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4))
        ).encode()
    if kind == "gzip":
        return gzip.compress(draw(st.binary(max_size=100)))
    if kind == "bad-gzip":
        return gzip.compress(b'{"a": 1}' * 50)[: draw(st.integers(0, 40))]
    if kind == "grpc":
        payload = draw(st.binary(max_size=60))
        n = draw(st.sampled_from([len(payload), len(payload) + 10, 2**32 - 1, 0]))
        return bytes([draw(st.sampled_from([0, 1, 2]))]) + n.to_bytes(4, "big") + payload
    if kind == "big":
        return draw(st.binary(min_size=1, max_size=8)) * draw(st.integers(1000, 20000))
    if kind == "empty":
        return b""
    return draw(st.binary(max_size=200))


@st.composite
def processing_requests(draw: st.DrawFn) -> PR:
    msg = PR(observability_mode=draw(st.booleans()))
    kind = draw(
        st.sampled_from(
            [
                "request_headers",
                "request_headers",
                "request_body",
                "request_trailers",
                "response_headers",
                "response_body",
                "response_trailers",
                "none",
            ]
        )
    )
    if kind in ("request_headers", "response_headers"):
        h = getattr(msg, kind)
        _headers(draw, h.headers)
        h.end_of_stream = draw(st.booleans())
    elif kind in ("request_body", "response_body"):
        b = getattr(msg, kind)
        b.body = _body(draw)
        b.end_of_stream = draw(st.booleans())
    elif kind in ("request_trailers", "response_trailers"):
        _headers(draw, getattr(msg, kind).trailers, 4)
    if draw(st.integers(0, 2)) == 0:
        for ns in draw(
            st.lists(st.sampled_from(["envoy.filters.http.ext_proc", "", "x"]), max_size=2)
        ):
            _struct(draw, msg.attributes[ns])
    if draw(st.integers(0, 4)) == 0:
        _struct(draw, msg.metadata_context.filter_metadata["meshward"])
    if draw(st.integers(0, 4)) == 0:
        msg.protocol_config.request_body_mode = draw(st.integers(0, 5))
        msg.protocol_config.response_body_mode = draw(st.integers(0, 5))
        msg.protocol_config.send_body_without_waiting_for_header_response = draw(st.booleans())
    # the wire round trip is what the server's deserialiser sees
    return PR.FromString(msg.SerializeToString())


contexts = st.builds(
    StreamContext,
    namespace=st.sampled_from(["shop", "", "other"]),
    workload=st.sampled_from(["api", "", "a/b"]),
    direction=st.sampled_from(["inbound", "outbound"]),
    node=st.sampled_from(["", "node-1"]),
    response_body=st.booleans(),
)
limits = st.builds(
    TapLimits,
    max_body=st.sampled_from([0, 1, 100, 64 * 1024]),
    max_headers=st.sampled_from([0, 1, 8, 128]),
    max_header_bytes=st.sampled_from([0, 50, 64 * 1024]),
    max_messages=st.sampled_from([1, 3, 4096]),
)
streams = st.lists(processing_requests(), max_size=10)


def _check_bounds(asm: ExtProcAssembler) -> None:
    lim = asm.limits
    assert len(asm.body) <= lim.max_body
    assert asm.messages <= lim.max_messages
    for hs in (asm.request_headers, asm.response_headers):
        if hs is not None:
            assert len(hs) <= lim.max_headers
            assert sum(len(k) + len(v) for k, v in hs) <= lim.max_header_bytes
    assert set(asm.attributes) <= _ATTRIBUTES
    assert all(len(v) <= 512 for v in asm.attributes.values())


@settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=streams, ctx=contexts, lim=limits)
def test_any_stream_assembles_within_limits(
    msgs: list[PR], ctx: StreamContext, lim: TapLimits
) -> None:
    asm = ExtProcAssembler(ctx, lim)
    for m in msgs:
        done = asm.feed(m)
        _check_bounds(asm)
        if done:
            break
    obs = asm.observation()
    if obs is not None:
        assert obs.seen_by == "envoy-tap" and obs.path
        assert obs.status is None or obs.status >= 0
        assert len(obs.body) <= lim.max_body


class _Context:
    """What TapService.process uses of a grpc.aio.ServicerContext."""

    def __init__(self, items: list[Any], end: str, metadata: tuple[tuple[str, Any], ...]) -> None:
        self.items = list(items)
        self.end = end
        self.metadata = metadata
        self.reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self.metadata

    async def read(self) -> Any:
        self.reads += 1
        if self.items:
            return self.items.pop(0)
        if self.end == "cut":
            raise ConnectionError("reset")
        if self.end == "hang":
            await asyncio.Event().wait()
        return grpc.aio.EOF


metadata = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "x-meshward-namespace",
                "x-meshward-workload",
                "x-meshward-direction",
                "x-meshward-node",
                "x-meshward-tap-response-body",
                "other",
            ]
        ),
        st.sampled_from(["shop", "api", "inbound", "outbound", "true", "", "TRUE"])
        | st.binary(max_size=8)
        | st.text(max_size=8),
    ),
    max_size=5,
).map(tuple)
wire_items = st.one_of(processing_requests(), processing_requests(), st.binary(max_size=30))

ENGINE = Engine()  # the real detectors, level 1, no store
PIPELINE = Pipeline(ENGINE, Metrics(), Joiner(max_pending=50))


@settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(wire_items, max_size=10),
    end=st.sampled_from(["eof", "eof", "cut", "hang"]),
    md=metadata,
    lim=limits,
    mode=st.sampled_from(["learn", "monitor", "enforce"]),
)
def test_any_process_stream_yields_at_most_one_judged_observation(
    items: list[Any], end: str, md: tuple[tuple[str, Any], ...], lim: TapLimits, mode: str
) -> None:
    problems: list[tuple[str, str, object]] = []
    seen: list[Observation] = []

    def sink(obs: Observation) -> None:
        seen.append(obs)
        ENGINE.set_mode(obs.destination.namespace, mode)
        PIPELINE.take_tap(obs)

    def problem(where: str, kind: str, **fields: object) -> None:
        problems.append((where, kind, fields))

    service = TapService(sink, Metrics(), problem, limits=lim, stream_timeout=0.02)  # type: ignore[arg-type]
    # what arrives: a decoded message, or bytes the deserialiser refuses (never raises)
    wire = [_deserialize(i) if isinstance(i, bytes) else i for i in items]
    assert all(isinstance(w, PR | Undecodable) for w in wire)
    ctx = _Context(wire, end, md)
    asyncio.run(service.process(None, ctx))  # type: ignore[arg-type]
    assert service.active == 0
    assert len(seen) <= 1
    assert not [p for p in problems if p[1] != "undecodable-message"], problems
    assert ctx.reads <= lim.max_messages + 1
    joiner = PIPELINE.joiner
    assert joiner.pending() == sum(len(w) for w in joiner._pending.values()) <= 50
    assert joiner._bytes == sum(w for ws in joiner._pending.values() for *_, w in ws)
    assert len(joiner._recent) <= 1000 and len(joiner._verdicts) <= 1000


@settings(max_examples=100 * SCALE, deadline=None)
@given(
    views=st.lists(
        st.tuples(
            st.sampled_from(["inbound", "outbound", "sideways"]),
            st.sampled_from(["r1", "r2", "", "r3"]),
            st.sampled_from(["/a", "/b"]),
            st.sampled_from(["api.shop", "API.shop", "web"]),
            st.booleans(),
            st.sampled_from([0, 100, 3000]),
        ),
        max_size=60,
    )
)
def test_joiner_stays_bounded_and_consistent(
    views: list[tuple[str, str, str, str, bool, int]],
) -> None:
    j = Joiner(max_pending=5, keep=3, max_bytes=8000)
    for direction, rid, path, authority, verdict, size in views:
        obs = Observation(
            seen_by="envoy-tap",
            method="GET",
            path=path,
            authority=authority,
            request_id=rid,
            body=b"b" * size,
            direction=direction,
        )
        if verdict:
            j.note_verdict(obs, {"verdict": "alert"})
        joined = j.add(obs)
        if joined is not None:
            ex, _, inbound = joined
            assert inbound.direction == "inbound"
            assert ex.outbound["direction"] == "outbound" and len(ex.verdicts) <= 16
        assert j.pending() == sum(len(w) for w in j._pending.values()) <= 5
        assert j._bytes == sum(w for ws in j._pending.values() for *_, w in ws) <= 8000
        assert all(0 < len(w) <= 16 for w in j._pending.values())
        assert len(j.exchanges) <= 3


_trace_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(VALUES),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "http_buffered_trace",
                    "http_streamed_trace_segment",
                    "request",
                    "response",
                    "headers",
                    "key",
                    "value",
                    "raw_value",
                    "body",
                    "as_bytes",
                    "as_string",
                    "truncated",
                    "trace_id",
                    "request_headers",
                    "response_headers",
                    "request_body_chunk",
                    "downstream_connection",
                    "connection",
                    "remote_address",
                    "socket_address",
                    "address",
                    "port_value",
                    "headers_received_time",
                    "seconds",
                    "nanos",
                ]
            )
            | st.text(max_size=8),
            kids,
            max_size=5,
        )
    ),
    max_leaves=40,
)


def _trace(draw: st.DrawFn) -> object:
    """A TraceWrapper-like value: mostly the real shape with hostile leaves."""
    pairs = [(":method", "GET"), (":path", "/")] if draw(st.booleans()) else []
    pairs += draw(
        st.lists(st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(VALUES)), max_size=6)
    )
    hdrs = [{"key": k, "value": v} for k, v in pairs]
    req = {
        "headers": hdrs,
        "body": {"as_bytes": draw(st.sampled_from(["", "eA==", "!!"]))},
        "headers_received_time": draw(
            st.sampled_from(
                ["2024-01-01T00:00:00Z", "x", {"seconds": 10**400}, {"seconds": "1"}, 5]
            )
        ),
    }
    shape = draw(st.sampled_from(["buffered", "segment", "any"]))
    if shape == "buffered":
        return {
            "http_buffered_trace": {
                "request": req,
                "response": {"headers": hdrs},
                "downstream_connection": draw(_trace_json),
            }
        }
    if shape == "segment":
        return {
            "http_streamed_trace_segment": {
                "trace_id": draw(st.sampled_from(["1", "2", 3, None])),
                draw(
                    st.sampled_from(["request_headers", "response_headers", "request_body_chunk"])
                ): draw(_trace_json | st.just(hdrs)),
            }
        }
    return draw(_trace_json)


traces = st.composite(_trace)()


@st.composite
def tap_streams(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["trace", "trace", "bytes", "digits", "deep", "ws"]))
        if kind == "trace":
            parts.append(json.dumps(draw(traces)).encode())
        elif kind == "digits":  # past int()'s digit limit
            parts.append(b"9" * 5000)
        elif kind == "deep":
            parts.append(b"[" * draw(st.integers(1, 200_000)))
        elif kind == "ws":
            parts.append(draw(st.sampled_from([b"\n", b" ", b"\x85", b"\xe2\x80\xa8", b""])))
        else:
            parts.append(draw(st.binary(max_size=40)))
    return b"".join(parts)


@settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=tap_streams(), cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_admin_splitter_any_bytes(data: bytes, cuts: list[int]) -> None:
    """Any byte stream in any chunking: values, or AdminTapError (the stream is dropped)."""
    s = TraceSplitter(max_value=1 << 16)
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for a, b in itertools.pairwise(bounds):
            s.feed(data[a:b])
            assert len(s._buf) <= (1 << 16) + (b - a) and len(s._pending) <= 4
    except AdminTapError:
        pass


class _Content:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c


class _Session:
    """What stream_observations uses of an aiohttp session: one 200 answer of these chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.status = 200
        self.content = _Content(chunks)

    @contextlib.asynccontextmanager
    async def post(self, url: str, json: object) -> AsyncIterator[_Session]:
        yield self


async def _tap(chunks: list[bytes], stats: TapStats) -> list[Observation]:
    session: Any = _Session(chunks)
    return [o async for o in stream_observations("http://admin", "c", stats=stats, session=session)]


@settings(max_examples=80 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(traces.map(lambda v: v if isinstance(v, dict) else {"v": v}), max_size=6),
    junk=tap_streams(),
    cuts=st.lists(st.integers(0, 10**6), max_size=6),
)
def test_admin_stream_any_traces(values: list[object], junk: bytes, cuts: list[int]) -> None:
    """Hostile trace objects (then any bytes) on the admin /tap stream: each becomes
    Observations or counts as bad; the stream ends only with AdminTapError. (Objects: Envoy
    streams nothing else, and a bare number cut by a chunk boundary reads as two.)"""
    data = b"".join(json.dumps(v).encode() + b"\n" for v in values) + junk
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    stats = TapStats()
    try:
        found = asyncio.run(_tap(chunks, stats))
    except AdminTapError:
        return
    assert stats.traces >= len(values)
    assert stats.observations == len(found)
    for obs in found:
        assert obs.seen_by == "envoy-tap"


# ---- regressions the fuzzing found


def _with_attribute(name: str, value: struct_pb2.Value) -> list[PR]:
    msgs = tap_messages("GET", "/a", request_id="rid-nan")
    msgs[0].attributes["envoy.filters.http.ext_proc"].fields[name].CopyFrom(value)
    return msgs


def test_non_finite_number_attribute_keeps_the_stream() -> None:
    """int(NaN) raised out of feed(): the handler failed and the request went unjudged."""
    for f in (math.nan, math.inf, -math.inf):
        seen: list[Observation] = []
        service = TapService(seen.append, Metrics(), lambda *a, **k: None)  # type: ignore[arg-type]
        msgs = _with_attribute("source.port", struct_pb2.Value(number_value=f))
        asyncio.run(service.process(None, _Context(msgs, "eof", ())))  # type: ignore[arg-type]
        assert len(seen) == 1 and seen[0].path == "/a" and seen[0].source.port == 40000


def test_only_known_attributes_are_kept() -> None:
    """Past 32 names each message still added one, its name of any length: now only the names
    `observation` reads are kept."""
    asm = ExtProcAssembler(StreamContext("shop", "api"))
    for i in range(50):
        msg = PR(observability_mode=True)
        for j in range(40):
            msg.attributes["x"].fields[f"{i}.{j}." + "n" * 1000].string_value = "v"
        msg.attributes["x"].fields["request.protocol"].string_value = "HTTP/2"
        asm.feed(msg)
    assert asm.attributes == {"request.protocol": "HTTP/2"}
    from meshward.core.wire import TAP_ATTRIBUTES

    assert set(TAP_ATTRIBUTES) == _ATTRIBUTES


def test_numbers_int_refuses_do_not_lose_the_exchange() -> None:
    """`²` passes isdigit() and int() refuses it, as it refuses 5000 digits: observation()
    raised, the server logged assemble-failed and the request was never judged."""
    for text in ("\u00b2", "9" * 5000, "\u0661"):
        msgs = tap_messages("POST", "/up", body=b"abc")
        msgs[0].request_headers.headers.headers[-1].raw_value = text.encode()  # content-length
        msgs[-1].response_headers.headers.headers[0].raw_value = text.encode()  # :status
        msgs[0].attributes["envoy.filters.http.ext_proc"].fields[
            "source.address"
        ].string_value = f"10.0.0.2:{text}"
        asm = ExtProcAssembler(StreamContext("shop", "api"))
        for m in msgs:
            asm.feed(m)
        obs = asm.observation()
        assert obs is not None and obs.status is None and obs.body_size == 3
        assert obs.source.port == 0


def test_splitter_undecodable_value_is_an_admin_tap_error() -> None:
    """raw_decode's ValueError (digits) and RecursionError (nesting) escaped the admin stream
    instead of the AdminTapError the tap command reports."""
    for data in (b"9" * 5000 + b" ", b"[" * 100_000):
        s = TraceSplitter()
        try:
            s.feed(data)
        except AdminTapError:
            continue
        raise AssertionError(f"{data[:10]!r}... accepted")


def test_admin_trace_with_overflowing_time_is_counted_bad() -> None:
    """float(10**400) raises OverflowError, which the admin stream did not catch: it ended."""
    good = {
        "http_buffered_trace": {
            "request": {
                "headers": [{"key": ":method", "value": "GET"}, {"key": ":path", "value": "/ok"}]
            }
        }
    }
    bad = json.loads(json.dumps(good))
    bad["http_buffered_trace"]["request"]["headers_received_time"] = {"seconds": 10**400}
    stats = TapStats()
    found = asyncio.run(_tap([json.dumps(bad).encode(), json.dumps(good).encode()], stats))
    assert [o.path for o in found] == ["/ok"] and stats.bad == 1


def test_joiner_bounds_the_bytes_waiting() -> None:
    """Bounded by count alone, 50,000 waiting views of 64 KiB bodies held over 3 GiB."""
    j = Joiner(max_bytes=1 << 20)
    for i in range(200):
        j.add(
            Observation(
                seen_by="envoy-tap",
                method="POST",
                path="/up",
                body=b"x" * 65536,
                request_id=f"r{i}",
                direction="inbound",
            )
        )
    assert j._bytes <= 1 << 20 and 0 < j.pending() <= 16 and j.evicted == 200 - j.pending()
    rid = next(iter(j._pending))[0]  # a view still waiting joins as before
    joined = j.add(
        Observation(
            seen_by="envoy-tap",
            method="POST",
            path="/up",
            body=b"x" * 65536,
            request_id=rid,
            direction="outbound",
        )
    )
    assert joined is not None and not joined[1]
