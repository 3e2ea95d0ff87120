"""Reading the request head: the fast path (clean header values left out of the parts,
keep_clean=False) against the general one (every scanned header a part), and the detector built
on it against the detector that inspects every part in detail."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector
from meshward.core.threats.detector import _Head, _head
from meshward.core.threats.names import CRLF

NAMES = [
    "host",
    "user-agent",
    "accept",
    "x-note",
    "content-type",
    "content-length",
    "transfer-encoding",
    "cookie",
    "authorization",
    "x-request-id",
    "x-envoy-peer",
    "content_length",  # an odd name that looks like framing
    "x odd",
    ":authority",
]
VALUES = [
    "",
    "orders.shop.svc.cluster.local",
    "Mozilla/5.0 (X11; Linux x86_64)",
    "application/json",
    "text/plain; charset=utf-16",
    "1030",
    "-5",
    "chunked",
    "gzip, chunked",
    "sid=3f9a2c; theme=dark",
    "Bearer abc.def.ghi",
    "x; ls -la /tmp",
    "1' or '1'='1",
    "<script>alert(1)</script>",
    "Tom &amp; Jerry",
    "a\r\nx-injected: 1",
    "line\nbreak",
    "naïve café",
    "x" * 600,  # longer than the clean cache keeps
    "y" * 90,  # longer than the small limit below
]
headers = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=8)


def request(pairs: list[tuple[str, str]], query: str = "") -> Observation:
    return Observation(
        "file",
        method="POST",
        path="/api/v1/orders/12345",
        query=query,
        headers=pairs,
        body=b'{"note": "leave at the door"}',
    )


def scanned(head: _Head) -> list[tuple[tuple[str, str], str]]:
    """The parts the pre-filter scans, with their texts (the body's index left out)."""
    return [(head.parts[i], head.texts[i]) for i in head.scanned if i < len(head.parts)]


def same_reading(fast: _Head, full: _Head) -> None:
    assert fast.lines == full.lines
    assert scanned(fast) == scanned(full)
    assert [(fast.parts[i], v) for i, v in fast.fresh] == [
        (full.parts[i], v) for i, v in full.fresh
    ]
    for attr in ("newline", "crlf", "content_type", "lengths", "codings", "odd_names", "cut"):
        assert getattr(fast, attr) == getattr(full, attr), attr
    assert fast.framing == full.framing
    # what the fast path leaves out is exactly the clean values of the general one
    kept = [(p, t) for p, t in zip(full.parts, full.texts, strict=True) if p[0] == "header"]
    left_out = [(p, t) for p, t in kept if (p, t) not in scanned(full)]
    assert all(t in full.clean.values for _, t in left_out)  # type: ignore[union-attr]


@settings(max_examples=150, deadline=None)
@given(first=headers, second=headers, limit=st.sampled_from([64, 256 * 1024]))
def test_fast_head_reads_what_the_general_one_scans(
    first: list[tuple[str, str]], second: list[tuple[str, str]], limit: int
) -> None:
    """After a first request has filled the clean-value cache, the second request's head read
    the fast way scans the same lines, flags the same framing and keeps the same fresh values
    as the general reading; it leaves out only clean values."""
    det = ThreatDetector(level=1, max_scan_bytes=limit)
    det.inspect(request(first))
    obs = request(first + second)
    fast = _head(obs, limit, det._clean, keep_clean=False)
    full = _head(obs, limit, det._clean)
    same_reading(fast, full)
    if not full.newline:
        assert len(fast.parts) <= len(full.parts)


FULL = ThreatDetector(level=1, prefilter=False)
DET = ThreatDetector(level=1)


def threats(det: ThreatDetector, obs: Observation) -> tuple[object, ...]:
    found = det.inspect(obs)
    return tuple((t.name, t.location, t.evidence) for t in found.threats), found.partial


@settings(max_examples=150, deadline=None)
@given(first=headers, second=headers, query=st.sampled_from(["", "q=1", "q=a%0db", "id=1'--"]))
def test_detector_with_the_fast_head_finds_what_full_inspection_finds(
    first: list[tuple[str, str]], second: list[tuple[str, str]], query: str
) -> None:
    """The same findings, in the same order, as inspecting every part in detail: on a request
    whose header values may have been found clean before (read twice), with CR/LF (the head is
    read again in full) and framing headers."""
    for obs in (request(first, query), request(first + second, query)):
        want = threats(FULL, obs)
        assert threats(DET, obs) == want
        assert threats(DET, obs) == want


def test_a_newline_reads_the_clean_values_again() -> None:
    """A CR or LF anywhere in the head sends every part to the detail pass, clean values
    included: the head is read again in full for that."""
    det = ThreatDetector(level=1)
    agent = ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
    det.inspect(request([agent]))
    assert agent[1] in det._clean.values
    obs = request([agent, ("x-note", "a\r\nx-injected: 1")])
    fast = _head(obs, det.max_scan_bytes, det._clean, keep_clean=False)
    assert fast.newline and ("header", "user-agent") not in fast.parts
    assert threats(det, obs) == threats(FULL, obs)
    names = {(t.name, t.location) for t in det.inspect(obs).threats}
    assert (CRLF, "header:x-note") in names
