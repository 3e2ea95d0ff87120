"""Large inputs are streamed (memory stays flat), and no input makes the readers crash."""

from __future__ import annotations

import contextlib
import json
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.core.observation import Observation
from meshward.formats import EntryError, read_observations
from meshward.formats.envoytap import observations_from_trace
from meshward.formats.har import observation_from_entry
from tests.support.samples import har_doc, har_entry, tap_trace

N = 2_500
BODY = 4_000  # few large entries: tracemalloc slows every allocation


def _peak_while_reading(path: Path) -> tuple[int, int, int]:
    """(observations, total body bytes, peak traced memory) reading without keeping items."""
    count = size = 0
    seen_bytes: list[int] = []
    tracemalloc.start()
    try:
        for item in read_observations([str(path)], progress=seen_bytes.append):
            assert isinstance(item, Observation), item
            count += 1
            size += len(item.body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(seen_bytes) == path.stat().st_size  # progress accounts for every byte
    return count, size, peak


def test_json_lines_tap_streamed(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    line = json.dumps(tap_trace("POST", body=b"x" * BODY))
    with p.open("w") as f:
        for _ in range(N):
            f.write(line + "\n")
    count, size, peak = _peak_while_reading(p)
    assert count == N and size == BODY * N
    assert p.stat().st_size > 10_000_000
    assert peak < 2_000_000, f"peak {peak} bytes: the file was not streamed"


def test_har_streamed(tmp_path: Path) -> None:
    p = tmp_path / "big.har"
    entry = json.dumps(har_entry("POST", body="y" * BODY))
    head = json.dumps(har_doc([]))
    with p.open("w") as f:
        f.write(head[: head.index("[") + 1])
        f.write(",".join([entry] * N))
        f.write(head[head.index("]") :])
    count, size, peak = _peak_while_reading(p)
    assert count == N and size == BODY * N
    assert p.stat().st_size > 10_000_000
    assert peak < 2_000_000, f"peak {peak} bytes: the file was not streamed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=5)
    ),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "request",
        "response",
        "method",
        "url",
        "headers",
        "postData",
        "text",
        "encoding",
        "status",
        "name",
        "value",
        "_source",
        "_destination",
        "startedDateTime",
        "bodySize",
        "params",
        "httpVersion",
    ]
)
har_like = st.recursive(
    st.none()
    | st.integers()
    | st.text(max_size=30)
    | st.just("base64")
    | st.just("GET")
    | st.just("http://a.b.svc/x?y=1"),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=6),
    max_leaves=25,
)
tap_keys = st.sampled_from(
    [
        "http_buffered_trace",
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
        "headers_received_time",
        "downstream_connection",
        "remote_address",
        "socket_address",
        "address",
        "port_value",
        ":method",
        ":path",
    ]
)
tap_like = st.recursive(
    st.none()
    | st.integers()
    | st.text(max_size=30)
    | st.just(":path")
    | st.just(":method")
    | st.just("QUJD"),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(tap_keys, kids, max_size=6),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, har_like))
def test_har_entry_never_crashes(entry: object) -> None:
    with contextlib.suppress(ValueError):
        observation_from_entry(entry)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, tap_like))
def test_trace_never_crashes(obj: object) -> None:
    with contextlib.suppress(ValueError):
        observations_from_trace({"http_buffered_trace": obj})


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=300)
    | st.builds(
        lambda v, cut: json.dumps(v).encode()[:cut],
        st.one_of(
            har_like.map(lambda e: har_doc([e])), tap_like.map(lambda t: {"http_buffered_trace": t})
        ),
        st.integers(0, 400),
    )
)
def test_any_file_gives_items_or_errors(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "fuzz.in"
    p.write_bytes(data)
    for item in read_observations([str(p)]):
        assert isinstance(item, (Observation, EntryError))
        if isinstance(item, EntryError):
            assert "\n" not in str(item)
