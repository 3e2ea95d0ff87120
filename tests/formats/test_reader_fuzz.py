"""Hostile files through the offline readers of `meshward learn` and `meshward score`: lone
surrogate escapes, non-finite timestamps and wrong types give Observations whose text is valid
Unicode or EntryErrors, never an exception, and what they teach is stored and loads again."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.app.flusher import Flusher
from meshward.app.store import open_store
from meshward.core.engine import Engine
from meshward.core.observation import Observation
from meshward.formats import EntryError, read_observations
from tests.support.samples import har_doc, har_entry, tap_trace

LONE = ["\ud800", "\udfff", "a\udc00", "\ud83d\ude00", "\\ud800"]
hostile = st.one_of(
    st.sampled_from(LONE),
    st.lists(st.sampled_from([*LONE, "a", "/", ".", ":", "é"]), max_size=5).map("".join),
    st.none(),
    st.integers(),
    st.floats(),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.sampled_from(["seconds", "nanos", "x"]), st.floats() | st.text(max_size=4)),
)


def _whole(obs: Observation) -> None:
    """Every text of the Observation encodes as UTF-8 (SQLite, Prometheus, logs need it)."""
    texts = [
        obs.method,
        obs.path,
        obs.query,
        obs.authority,
        obs.protocol,
        obs.request_id,
        obs.source.key,
        obs.destination.key,
        obs.destination.namespace,
    ]
    texts += [x for h in obs.headers for x in h]
    for t in texts:
        t.encode("utf-8")
    assert math.isfinite(obs.time)


@st.composite
def har_files(draw: st.DrawFn) -> bytes:
    entry = har_entry("POST", body="{}")
    target = draw(st.sampled_from(["entry", "request", "header", "time", "url"]))
    value = draw(hostile)
    if target == "entry":
        entry[draw(st.sampled_from(["_source", "_destination", "startedDateTime"]))] = value
    elif target == "request":
        entry["request"][draw(st.sampled_from(["method", "url", "httpVersion"]))] = value
    elif target == "header":
        entry["request"]["headers"].append(
            {"name": draw(st.sampled_from(["host", "x-a"])), "value": value}
        )
    elif target == "time":
        entry["startedDateTime"] = value
    else:
        entry["request"]["url"] = f"http://a.shop.svc/{value}?{value}=1"
    return json.dumps(har_doc([entry, har_entry("GET")])).encode("utf-8", "surrogatepass")


@st.composite
def tap_files(draw: st.DrawFn) -> bytes:
    trace = tap_trace("GET")
    req = trace["http_buffered_trace"]["request"]
    value = draw(hostile)
    where = draw(st.sampled_from(["header", "time", "path", "authority"]))
    if where == "time":
        req["headers_received_time"] = value
    else:
        name = {"header": "x-a", "path": ":path", "authority": ":authority"}[where]
        req["headers"] = [h for h in req["headers"] if h["key"] != name]
        req["headers"].append({"key": name, "value": value})
    line = json.dumps(trace).encode("utf-8", "surrogatepass")
    good = json.dumps(tap_trace("GET")).encode()
    if draw(st.booleans()):  # JSON Lines (json module) or one document (ijson)
        return line + b"\n" + good + b"\n"
    return line + good


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(har_files(), tap_files()))
def test_hostile_files_read_store_and_load_again(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "in.json"
    p.write_bytes(data)
    db = tmp_path / "m.db"
    db.unlink(missing_ok=True)
    flusher = Flusher(Engine(), open_store(str(db)))
    flusher.load()
    engine = flusher.engine
    try:
        for item in read_observations([str(p)]):
            assert isinstance(item, (Observation, EntryError))
            if isinstance(item, Observation):
                _whole(item)
                engine.evaluate(item)
        flusher.flush()
        learned = sorted(engine.allowlist.services)
    finally:
        flusher.close()
    again = Flusher(Engine(), open_store(str(db)))
    try:
        again.load()
        assert sorted(again.engine.allowlist.services) == learned
    finally:
        again.close()


def test_regression_lone_surrogate_in_har_ends_read_not_process(tmp_path: Path) -> None:
    """ijson's C backend decodes a `\\udc00` escape to bytes that are not UTF-8
    and raises UnicodeDecodeError (not a JSONError): `meshward learn` and `score` crashed with a
    traceback instead of reporting the file."""
    entry = har_entry("GET")
    entry["request"]["url"] = "http://api.shop.svc/\udc00"  # a lone low half
    p = tmp_path / "s.har"
    p.write_text(json.dumps(har_doc([har_entry("GET"), entry])))
    items = list(read_observations([str(p)]))
    assert isinstance(items[0], Observation)
    assert isinstance(items[-1], EntryError) and "rest of file skipped" in str(items[-1])


def test_regression_lone_surrogates_from_json_lines_become_replacement(tmp_path: Path) -> None:
    """The json module reads `\\ud800` as a lone surrogate: the path reached the detectors
    (UnicodeEncodeError) and the destination the store (every flush failed)."""
    trace = tap_trace("GET", path="/a/\ud800")
    for h in trace["http_buffered_trace"]["request"]["headers"]:
        if h["key"] == ":authority":
            h["value"] = "x\udc00.shop.svc"
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps(trace) + "\n")
    (obs,) = list(read_observations([str(p)]))
    assert isinstance(obs, Observation)
    assert obs.path == "/a/\ufffd" and obs.destination.key == "shop/x\ufffd"


def test_regression_non_finite_tap_timestamp_is_an_entry_error(tmp_path: Path) -> None:
    trace = tap_trace("GET")
    p = tmp_path / "t.jsonl"
    lines = []
    for seconds in ("NaN", "inf", 1e400):
        trace["http_buffered_trace"]["request"]["headers_received_time"] = {"seconds": seconds}
        lines.append(json.dumps(trace))
    p.write_text("\n".join(lines) + "\n")
    items = list(read_observations([str(p)]))
    assert len(items) == 3 and all(isinstance(i, EntryError) and "finite" in str(i) for i in items)


def test_regression_deeply_nested_line_is_a_line_error(tmp_path: Path) -> None:
    """json.loads raises RecursionError (not a ValueError) on deep nesting: one such line in a
    tap JSON Lines file crashed `meshward learn` / `score`, in format sniffing and in reading."""
    deep = b'{"http_buffered_trace": ' + b"[" * 5000 + b"\n"  # past json's recursion limit
    good = json.dumps(tap_trace("GET")).encode() + b"\n"
    for data in (good + deep + good, deep + good):
        p = tmp_path / "deep.jsonl"
        p.write_bytes(data)
        items = list(read_observations([str(p)]))
        assert [type(i).__name__ for i in items][-1] == "Observation", items
        assert any(isinstance(i, EntryError) and "invalid JSON" in str(i) for i in items), items


def test_numbers_are_ascii_digits_within_bounds() -> None:
    """`²` passes isdigit() and int() refuses it, as it refuses 4,300+ digits: an odd port,
    status or length is unknown, not a lost entry."""
    from meshward.core.values import decimal
    from meshward.formats.common import content_length, split_authority

    assert decimal("8080") == 8080 and decimal("²") is None and decimal("9" * 5000) is None
    assert decimal("１２") is None and decimal("") is None and decimal("123", 2) is None
    assert split_authority("api:²") == ("api", 0) and split_authority("[::1]:99999") == ("::1", 0)
    assert content_length([("content-length", "²")]) is None
