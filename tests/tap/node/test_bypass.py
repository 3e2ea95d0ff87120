"""The bypass watch on decoded segments: plaintext heads around the proxy, answered by the app,
cleared by the proxy's copy on lo, by an answer the proxy made itself, or by no answer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.observation import Identity
from meshward.core.threats.names import MESH_SIDECAR_BYPASS
from meshward.core.wire import LINKERD_PROXY_PORTS
from meshward.tap.node.bypass import BypassConfig, BypassMonitor, request_line
from meshward.tap.node.packet import decode
from tests.support.frames import ether, ipv4, tcp

POD = "10.2.0.5"
CLIENT = "10.2.0.9"
PODS = {POD: Identity("shop", "api", "api.shop.serviceaccount.identity.linkerd.cluster.local", POD)}
PSH_ACK = 0x18


def seg(data: bytes, dport: int = 8080, sport: int = 50000, src: str = CLIENT, ts: float = 100.0):
    pkt = decode(ether(ipv4(src, POD, 6, tcp(sport, dport, 1, 1, PSH_ACK, data))), ts)
    assert pkt is not None
    return pkt


def answer(data: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", sport: int = 50000):
    """The pod's first segment back to the client on that connection."""
    pkt = decode(ether(ipv4(POD, CLIENT, 6, tcp(8080, sport, 1, 1, PSH_ACK, data))), 100.01)
    assert pkt is not None
    return pkt


SETTINGS = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64"


def monitor(mode: str = "enforce") -> BypassMonitor:
    return BypassMonitor(
        PODS.get, lambda ns: mode, LINKERD_PROXY_PORTS, BypassConfig(confirm_window=1.0)
    )


def resolve(ip: str) -> Identity:
    return Identity(ip=ip)


GET = b"GET /admin/users?id=1 HTTP/1.1\r\nHost: api\r\n\r\n"


def test_a_plaintext_request_around_the_proxy_is_a_bypass() -> None:
    mon = monitor()
    mon.feed(seg(GET), "pod:eth0")
    mon.feed(answer(), "pod:eth0")  # the app answered it
    assert mon.tick(100.5, resolve) == []  # still waiting for the proxy's copy
    out = mon.tick(101.1, resolve)
    assert [o.threats[0].name for o in out] == [MESH_SIDECAR_BYPASS]
    alert = out[0]
    assert alert.extra["answered"] == "200"
    assert alert.destination.key == "shop/api" and alert.destination.port == 8080
    assert alert.source.ip == CLIENT and alert.method == "GET" and alert.path == "/admin/users"
    assert alert.query == "id=1" and "/admin" not in alert.threats[0].evidence
    # more requests on the same keep-alive connection are not judged again
    mon.feed(seg(GET, ts=102.0))
    assert mon.tick(104.0, resolve) == []


def test_the_same_request_carried_by_the_proxy_is_not() -> None:
    mon = monitor()
    mon.feed(seg(GET))
    mon.proxied(POD, "GET", "/admin/users", "http/1.1", 100.01)
    assert mon.tick(102.0, resolve) == []
    assert mon.stats["bypass_proxied"] == 1


@pytest.mark.parametrize(
    "what",
    [
        "tls",  # a TLS record to the app port: meshed
        "proxy-port",  # to the proxy's inbound port
        "monitor",  # the pod is not in enforce
        "other-pod",  # to an address that is no watched pod
        "self",  # the pod to itself
    ],
)
def test_what_is_not_a_bypass(what: str) -> None:
    mon = monitor("monitor" if what == "monitor" else "enforce")
    if what == "tls":
        mon.feed(seg(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40))
    elif what == "proxy-port":
        mon.feed(seg(GET, dport=4143))
    elif what == "other-pod":
        pkt = decode(ether(ipv4(CLIENT, "10.2.0.77", 6, tcp(5, 8080, 1, 1, PSH_ACK, GET))), 100.0)
        mon.feed(pkt)
    elif what == "self":
        mon.feed(seg(GET, src=POD))
    else:
        mon.feed(seg(GET))
    assert mon.tick(105.0, resolve) == []


def test_h2c_is_recognised_and_cleared_by_any_proxied_h2_request() -> None:
    assert request_line(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == ("PRI", "*")
    assert request_line(b"GET / HTTP/1.1\r\n") == ("GET", "/")
    assert request_line(b"GET /\r\n") is None and request_line(b"get / HTTP/1.1\r\n") is None
    mon = monitor()
    mon.feed(seg(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
    mon.feed(answer(SETTINGS))
    mon.proxied(POD, "POST", "/grpc.health.v1.Health/Check", "grpc", 100.02)
    assert mon.tick(102.0, resolve) == []
    # gRPC's server sends its SETTINGS before the preface: its ACK after it is the answer
    mon.feed(answer(SETTINGS, sport=50001))
    mon.feed(seg(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", sport=50001, ts=103.0))
    assert mon.tick(104.5, resolve) == []  # not answered yet
    mon.feed(answer(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00", sport=50001))
    out = mon.tick(104.5, resolve)
    assert len(out) == 1 and out[0].protocol == "h2" and out[0].extra["answered"] == "h2"


def test_state_is_bounded() -> None:
    mon = BypassMonitor(
        PODS.get,
        lambda ns: "enforce",
        LINKERD_PROXY_PORTS,
        BypassConfig(confirm_window=1.0, max_pending=50, max_connections=100, max_alert_keys=5),
    )
    for i in range(1000):
        client = f"10.3.{i // 250}.{i % 250}"
        mon.feed(seg(GET, sport=1000 + i, src=client))
        reply = ipv4(POD, client, 6, tcp(8080, 1000 + i, 1, 1, PSH_ACK, b"HTTP/1.1 200 OK\r\n"))
        mon.feed(decode(ether(reply), 100.0))  # type: ignore[arg-type]
    assert len(mon._pending) == 50 and len(mon._seen) == 100
    assert mon.stats["untracked"] > 0
    out = mon.tick(110.0, resolve)
    assert len(out) == 50 and len(mon._dedup) == 5
    for i in range(1000):
        mon.proxied(POD, "GET", f"/{i}", "http/1.1", 110.0)
    assert len(mon._proxied[POD]) == mon.config.max_proxied


def test_a_request_line_longer_than_its_segment_is_judged_by_its_prefix() -> None:
    long_path = "/search/" + "a" * 3000
    head = f"GET {long_path}?q=1 HTTP/1.1\r\nHost: api\r\n\r\n".encode()
    first = head[:1400]
    method, target = request_line(first)  # type: ignore[misc]
    assert method == "GET" and target.endswith("...") and long_path.startswith(target[:-3])
    mon = monitor()
    mon.feed(seg(first))
    mon.proxied(POD, "GET", long_path, "http/1.1", 100.01)
    assert mon.tick(102.0, resolve) == []
    mon.feed(seg(first, sport=50001, ts=103.0))  # not carried: a bypass
    mon.feed(answer(sport=50001))
    assert len(mon.tick(105.0, resolve)) == 1
    assert request_line(b"GET /x") is None  # a short odd segment, not a cut line


def test_no_answer_or_the_proxys_own_answer_is_no_bypass() -> None:
    """A STRICT sidecar closes a plaintext connection unanswered; a sidecar that takes the
    request and refuses it (ext_authz, the mesh's policy) answers itself, marked as its own."""
    mon = monitor()
    mon.feed(seg(GET))  # never answered
    denied = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nserver: istio-envoy\r\n\r\n"
    mon.feed(seg(GET, sport=50001))
    mon.feed(answer(denied, sport=50001))
    l5d = b"HTTP/1.1 403 Forbidden\r\nl5d-proxy-error: unauthorized\r\n\r\n"
    mon.feed(seg(GET, sport=50002))
    mon.feed(answer(l5d, sport=50002))
    assert mon.tick(102.0, resolve) == []
    assert mon.stats["bypass_refused"] == 2 and len(mon._pending) == 1  # one still waits
    # an answer that comes late (a slow app) is still judged
    mon.feed(answer(sport=50000))
    assert len(mon.tick(103.0, resolve)) == 1
    mon.feed(seg(GET, sport=50003, ts=104.0))
    assert mon.tick(104.0 + mon.config.answer_window, resolve) == []
    assert mon.stats["bypass_unanswered"] == 1 and not mon._pending
    # only the first answer counts, and not from another connection
    mon.feed(seg(GET, sport=50004, ts=130.0))
    mon.feed(answer(sport=50005))
    mon.feed(answer(denied, sport=50004))
    mon.feed(answer(sport=50004))
    assert mon.tick(132.0, resolve) == [] and mon.stats["bypass_refused"] == 3


def hop(data: bytes, ts: float = 100.005):
    """A segment the Istio proxy sends the app on the pod's lo, from 127.0.0.6."""
    pkt = decode(ether(ipv4("127.0.0.6", POD, 6, tcp(41000, 8080, 1, 1, PSH_ACK, data))), ts)
    assert pkt is not None
    return pkt


def test_the_istio_proxys_hop_clears_what_it_forwards() -> None:
    mon = monitor()
    mon.feed(seg(GET))
    mon.feed(answer())
    mon.proxy_hop(hop(b"GET /admin/users?id=1 HTTP/1.1\r\nHost: api\r\nx-envoy: 1\r\n\r\n"))
    # gRPC on the proxy's pooled h2 connection: no preface, a HEADERS frame on stream 5
    mon.feed(seg(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", sport=50001))
    mon.feed(answer(SETTINGS, sport=50001))
    mon.proxy_hop(hop(bytes.fromhex("00000a010400000005") + bytes(10)))
    # a long URL cut on both sides, at different lengths
    long_get = b"GET /search/" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n"
    mon.feed(seg(long_get[:1400], sport=50002))
    mon.feed(answer(sport=50002))
    mon.proxy_hop(hop(long_get[:2000]))
    mon.proxy_hop(hop(b"\x00\x00\x0a\x01\x00\x00\x00\x00\x00 body"))  # stream 0: no request
    assert mon.tick(102.0, resolve) == []
    assert mon.stats["bypass_proxied"] == 3 and mon.stats["hop_not_a_request"] == 1
    # a different request forwarded does not clear this one
    mon.feed(seg(GET, sport=50003, ts=103.0))
    mon.feed(answer(sport=50003))
    mon.proxy_hop(hop(b"GET /health HTTP/1.1\r\n\r\n", ts=103.01))
    assert len(mon.tick(105.0, resolve)) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("hao"), st.binary(max_size=80)), max_size=30))
def test_any_bytes_are_judged_without_crashing(segments: list[tuple[str, bytes]]) -> None:
    """Heads, answers and proxy hops of any content: counted or judged, never a crash."""
    mon = monitor()
    for i, (kind, data) in enumerate(segments):
        if kind == "h":
            mon.feed(seg(data, sport=50000 + i % 3))
        elif kind == "a":
            mon.feed(answer(data, sport=50000 + i % 3))
        else:
            mon.proxy_hop(hop(data))
    mon.tick(100.0 + mon.config.answer_window + 1, resolve)
    assert not mon._pending
