"""Hostile but well-formed CheckRequests through the whole ext_authz path: conversion, the
pipeline (decision cache, join bookkeeping, metrics) and the engine with the real detectors, in
every mode. An exception here would make the handler answer INTERNAL, which an enforcing
sidecar turns into a 403 for the request: a crash is an outage, so none is allowed."""

from __future__ import annotations

import gzip
import json
import zlib

from envoy.service.auth.v3 import external_auth_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.app.pipeline import Pipeline
from meshward.core.engine import Engine
from meshward.core.observation import Verdict
from meshward.core.peer import Refused, SpiffeId, guarded
from meshward.core.threats import ThreatDetector
from meshward.extauthz.convert import check_to_observation, denied_response
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.join import Joiner

CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data",
    "application/xml",
    "text/xml",
    "application/grpc",
    "application/grpc+proto",
    "text/plain",
    "application/octet-stream",
    ";;;",
    "application/json\x00",
    "",
]
HEADER_NAMES = [
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "content-length",
    "cookie",
    "x-request-id",
    "user-agent",
    "referer",
    "x-forwarded-for",
    "authorization",
    ":authority",
    "x-envoy-auth-partial-body",
    "host",
    "x-a\x00",
    "",
]
ESCAPES = [
    "\\ud800",
    "\\udc00",
    "\\ud83d\\ude00",
    "%ud800",
    "%uDC00",
    "\\u{d800}",
    "&#xd800;",
    "&#55296;",
    "%ed%a0%80",
]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                "json",
                "deep",
                "raw",
                "gzip",
                "bad-gzip",
                "deflate",
                "form",
                "multipart",
                "xml",
                "escapes",
            ]
        )
    )
    if kind == "escapes":  # lone and paired surrogate escapes, as keys, values and raw text
        parts = draw(
            st.lists(st.sampled_from([*ESCAPES, "a", "' or 1=1 --", " ", ":"]), max_size=8)
        )
        text = "".join(parts)
        return draw(st.sampled_from([f'{{"{text}": "{text}"}}', text, f"q={text}"])).encode()
    if kind == "json":
        return json.dumps(draw(_json_values)).encode()
    if kind == "deep":
        n = draw(st.integers(1, 3000))
        return b"[" * n + b"1" + b"]" * draw(st.integers(0, n))
    if kind == "gzip":
        return gzip.compress(json.dumps(draw(_json_values)).encode())
    if kind == "deflate":
        return zlib.compress(draw(st.binary(max_size=200)))
    if kind == "bad-gzip":
        return gzip.compress(b'{"a": 1}' * 50)[: draw(st.integers(0, 30))]
    if kind == "form":
        return "&".join(draw(st.lists(st.text(max_size=20), max_size=20))).encode(
            "utf-8", "surrogatepass"
        )
    if kind == "multipart":
        part = draw(st.binary(max_size=100))
        return (
            b'--XyZ\r\nContent-Disposition: form-data; name="f"\r\n\r\n'
            + part
            + draw(st.sampled_from([b"\r\n--XyZ--\r\n", b"", b"\r\n--XyZ"]))
        )
    if kind == "xml":
        return b"<?xml version='1.0'?><a>" + draw(st.binary(max_size=100)) + b"</a>"
    return draw(st.binary(max_size=300))


@st.composite
def check_requests(draw: st.DrawFn) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.principal = draw(
        st.sampled_from(
            [
                "spiffe://cluster.local/ns/shop/sa/web",
                "",
                "spiffe://x",
                "web.shop.serviceaccount.identity.linkerd.cluster.local",
            ]
        )
        | st.text(max_size=80)
    )
    a.source.address.socket_address.address = draw(st.sampled_from(["10.0.0.2", "::1", "", "x"]))
    a.source.address.socket_address.port_value = draw(st.integers(0, 2**32 - 1))
    a.destination.principal = draw(st.text(max_size=60))
    if draw(st.booleans()):
        a.context_extensions["namespace"] = draw(st.sampled_from(["shop", "", "x" * 300]))
        a.context_extensions["workload"] = draw(st.sampled_from(["api", "", "a/b"]))
    http = a.request.http
    http.method = draw(st.sampled_from(["GET", "POST", "PUT", "", "get", "M" * 100]))
    http.path = draw(
        st.sampled_from(["/", "/api/items?page=1", "", "?", "#", "/a?b#c"])
        | st.text(max_size=120)
        | st.lists(st.sampled_from([*ESCAPES, "/", "?q=", "&", "x"])).map("".join)
    )
    http.host = draw(st.text(max_size=40))
    http.protocol = draw(st.sampled_from(["HTTP/1.1", "HTTP/2", "", "SPDY/9"]))
    http.id = draw(st.text(max_size=20))
    body = draw(bodies())
    if draw(st.booleans()):
        http.raw_body = body
    else:
        http.body = body.decode("utf-8", "replace")
    http.size = draw(st.sampled_from([-1, 0, len(body), len(body) + 100]))
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    headers = [("content-type", ctype.encode())]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(HEADER_NAMES) | st.text(max_size=15))
        value = draw(
            st.sampled_from(
                [
                    b"gzip",
                    b"deflate, gzip",
                    b"br",
                    b"chunked",
                    b"-1",
                    b"12, 13",
                    b"true",
                    *(e.encode() for e in ESCAPES),
                ]
            )
            | st.binary(max_size=60)
        )
        headers.append((name, value))
    use_map = draw(st.booleans())
    for k, v in headers:
        if use_map:
            http.header_map.headers.add(key=k, raw_value=v)
        else:
            http.headers[k] = v.decode("utf-8", "replace")
    return req


ENGINE = Engine()  # the real detectors, level 1, no store
PIPELINE = Pipeline(ENGINE, Metrics(), Joiner())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=check_requests(), mode=st.sampled_from(["learn", "monitor", "enforce"]))
def test_any_check_request_gets_a_verdict(req: external_auth_pb2.CheckRequest, mode: str) -> None:
    # the wire form round trip is what the server's deserialiser sees
    req = external_auth_pb2.CheckRequest.FromString(req.SerializeToString())
    obs = check_to_observation(req, lambda: ("shop", "api"))
    ENGINE.set_mode(obs.destination.namespace, mode)
    verdict = PIPELINE.judge_check(obs)
    assert isinstance(verdict, Verdict)
    assert verdict.verdict in ("allow", "alert", "deny")
    if mode != "enforce":
        assert verdict.verdict != "deny"
    if verdict.verdict == "deny":
        answer = denied_response(obs.request_id)
        assert answer.denied_response.status.code == 403
        said = json.loads(answer.denied_response.body)
        assert said == {"error": "denied by meshward", "request_id": obs.request_id[:128]}


DETECTORS = {level: ThreatDetector(level=level) for level in (2, 3)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=check_requests(), level=st.sampled_from([2, 3]))
def test_every_level_inspects_any_check_request(
    req: external_auth_pb2.CheckRequest, level: int
) -> None:
    """Levels 2 and 3 run more of libinjection (ungated at 3) and more signatures."""
    obs = check_to_observation(req)
    for t in DETECTORS[level].inspect(obs).threats:  # evidence: short, control characters escaped
        assert len(t.evidence) <= 128
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in t.evidence), t


WEB = SpiffeId("cluster.local", "shop", "web")
hints = st.one_of(
    st.just(""), st.sampled_from(["shop", "payments", "web", "api"]), st.text(max_size=40)
)


@settings(max_examples=300, deadline=None)
@given(req=check_requests(), ns=hints, wl=hints, principal=hints)
def test_a_verified_sidecar_speaks_for_its_namespace_only(
    req: external_auth_pb2.CheckRequest, ns: str, wl: str, principal: str
) -> None:
    """Whatever context_extensions, metadata and destination.principal a Check carries, with a
    verified peer the destination is in the peer's namespace with the peer's principal, or the
    Check is Refused."""
    req.attributes.context_extensions["namespace"] = ns
    req.attributes.context_extensions["workload"] = wl
    req.attributes.destination.principal = principal
    try:
        obs = check_to_observation(req, lambda: (ns, wl), lambda n, w: guarded(WEB, n, w), WEB.uri)
    except Refused:
        assert (ns and ns != "shop") or wl
        return
    assert obs.destination.namespace == "shop"
    assert obs.destination.principal == WEB.uri
    assert obs.destination.workload == (wl or "web")
