"""Hostile but plausible input to `meshward serve`'s HTTP JSON API: every answer is a 2xx or a
4xx with a JSON error (never a 500), the server goes on serving, every store flush succeeds and
what was persisted loads again after a restart on the same database.

One server (on a SQLite file, flushing often) runs on its own event loop in a thread for the
whole module; the examples talk to it over real HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.app.serve import Server
from meshward.app.store import open_store
from meshward.core.observation import (
    Identity,
    Observation,
    observation_from_dict,
    observation_to_dict,
)
from meshward.core.threats.inspection import NoDetector
from tests.support.metrics import sample
from tests.support.serve import API_TOKEN, engine_on, running_server

GOOD = observation_to_dict(
    Observation(
        seen_by="node-tap",
        destination=Identity("mesh", "cart"),
        source=Identity("mesh", "web"),
        method="POST",
        path="/cart/7",
        query="q=1",
        headers=[("content-type", "application/json")],
        body=b'{"sku": "a-1"}',
        request_id="r-1",
    )
)
LONE = ["\ud800", "\udfff", "a\udc00b", "\ud83d", "\ude00x", "\ud83d\ude00"]


class ServerThread:
    """`running_server` on its own loop in a daemon thread; `stop()` ends it."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.server: Server | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._main(),), daemon=True
        )
        self.thread.start()
        assert self.ready.wait(20), "server did not start"

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_server(
            db=self.db, detector=NoDetector(), flush_interval=0.02, max_ingest_bytes=1 << 20
        ) as srv:
            self.server = srv
            self.ready.set()
            await self._stop.wait()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.ports["http"]

    def stop(self) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(20)
        assert not self.thread.is_alive()
        self.loop.close()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = "application/json",
) -> tuple[int, bytes]:
    """Raw HTTP on purpose (not the API client): hostile paths, bodies and content types, from
    a caller holding the token (what is fuzzed here is what the handlers get past the guard)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        headers = {"content-type": content_type} if content_type and body is not None else {}
        headers["authorization"] = f"Bearer {API_TOKEN}"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def assert_answered(status: int, body: bytes) -> None:
    """Not a server error, and an error is a JSON object naming it."""
    assert status < 500, (status, body[:300])
    if body.startswith(b"Got more than 8190 bytes"):  # aiohttp's own parser: URL too long
        return
    if 400 <= status < 500 and status not in (404, 405, 413):
        assert "error" in json.loads(body), body[:300]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    db = str(tmp_path_factory.mktemp("api-fuzz") / "m.db")
    srv = ServerThread(db)
    try:
        yield srv
    finally:
        if srv.thread.is_alive():
            srv.stop()


# ---- strategies: plausible shapes with hostile leaves

hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(LONE),
    st.lists(st.sampled_from([*LONE, "a", "/", "%2F", "..", "é", "\x00", " "]), max_size=6).map(
        "".join
    ),
    st.integers(1, 20_000).map(lambda n: "x" * n),
)
hostile_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**30, -(10**30), 2**63, -1, 0]),
    st.floats(),  # NaN and the infinities included
    hostile_text,
)
hostile = st.recursive(
    hostile_scalar,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(hostile_text, kids, max_size=3),
    max_leaves=8,
)
FIELDS = [*GOOD, "body_b64", "nonsense"]
IDENTITY_FIELDS = ["namespace", "workload", "principal", "ip", "port"]


@st.composite
def observations(draw: st.DrawFn) -> Any:
    doc: dict[str, Any] = json.loads(json.dumps(GOOD))
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        doc[key] = draw(hostile)
    for end in draw(st.lists(st.sampled_from(["source", "destination"]), max_size=2)):
        if isinstance(doc.get(end), dict):
            doc[end][draw(st.sampled_from(IDENTITY_FIELDS))] = draw(hostile)
    if draw(st.booleans()):  # plausible structure, hostile contents
        doc["headers"] = draw(
            st.lists(st.lists(hostile_text, min_size=0, max_size=3) | hostile, max_size=3)
        )
        doc["threats"] = draw(
            st.lists(
                st.fixed_dictionaries({"name": hostile_text}, optional={"evidence": hostile})
                | hostile,
                max_size=2,
            )
        )
        doc["extra"] = draw(st.dictionaries(hostile_text, hostile, max_size=2) | hostile)
        doc["body_b64"] = draw(st.sampled_from(["", "!!", "QUJD", "QUJ", "=", "QUJD\n"]) | hostile)
    return draw(st.sampled_from([doc, doc, draw(hostile)]))


def _encode(items: list[Any], lines: bool) -> bytes:
    if lines:
        return "\n".join(json.dumps(i) for i in items).encode("utf-8", "surrogatepass")
    return json.dumps(items).encode("utf-8", "surrogatepass")  # \ud800 escapes, NaN, Infinity


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 3000).map(lambda n: b"[" * n),
    st.integers(1, 3000).map(lambda n: b'[{"extra": ' * n + b"1"),
    st.integers(1, 3000).map(lambda n: (b"[" * n) + (b"]" * n)),
    st.sampled_from(
        [
            b"9" * 5000,
            b"[" + b"9" * 5000 + b"]",
            b'[{"time": ' + b"1" * 5000 + b"}]",
            b"\xff\xfe[]",
            b'["\xed\xa0\x80"]',
            b"[]",
            b"{}",
            b"null",
            b"\n\n",
        ]
    ),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/x-ndjson",
        "text/plain",
        "application/json; charset=foo",
        "application/json; charset=utf-16",
        "multipart/form-data; boundary=x",
        None,
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.lists(observations(), max_size=6),
    lines=st.booleans(),
    raw=st.none() | raw_bodies,
    content_type=content_types,
)
def test_ingest_answers_and_keeps_serving(
    served: ServerThread, batch: list[Any], lines: bool, raw: bytes | None, content_type: str | None
) -> None:
    body = raw if raw is not None else _encode(batch, lines)
    status, answer = request(served.port, "POST", "/api/v1/observations", body, content_type)
    assert_answered(status, answer)
    if status == 202 and raw is None and not lines:  # every item is counted one way or the other
        counts = json.loads(answer)
        assert counts["accepted"] + counts["rejected"] == len(batch), counts


names = st.one_of(
    hostile_text.map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
    st.sampled_from(
        [
            "a",
            "a/b",
            "..",
            "%2e%2e",
            "%ED%A0%80",
            "%FF",
            "%",
            "%%",
            "a%00b",
            "x" * 10_000,
            "UPPER",
            "-a",
            "ns.x",
            "%F0%9F%98%80",
            "%C3%A9",
        ]
    ),
)
mode_bodies = st.one_of(
    st.builds(
        lambda m: json.dumps({"mode": m}).encode("utf-8", "surrogatepass"),
        st.sampled_from(["learn", "monitor", "enforce"]) | hostile,
    ),
    st.builds(lambda d: json.dumps(d).encode("utf-8", "surrogatepass"), hostile),
    raw_bodies,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names, body=mode_bodies, content_type=content_types, query=names)
def test_modes_and_reads_answer(
    served: ServerThread, name: str, body: bytes, content_type: str | None, query: str
) -> None:
    status, answer = request(served.port, "PUT", f"/api/v1/modes/{name}", body, content_type)
    assert_answered(status, answer)
    for path in (
        f"/api/v1/alerts?limit={query}",
        f"/api/v1/alerts?namespace={query}",
        f"/api/v1/allowlist?destination={query}",
        f"/api/v1/exchanges?limit={query}",
        "/api/v1/modes",
    ):
        status, answer = request(served.port, "GET", path)
        assert_answered(status, answer)


def _strict_json(body: bytes) -> Any:
    """A JSON document any client reads: no NaN or Infinity, text that is valid UTF-8."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} in an API answer")

    doc = json.loads(body, parse_constant=refuse)
    json.dumps(doc, ensure_ascii=False).encode("utf-8")  # no lone surrogates either
    return doc


def test_zz_everything_still_served_and_restart_loads(served: ServerThread) -> None:
    """After the fuzzing above (pytest runs this module's tests in order): every read answers,
    no flush failed, and the same database opens again with what was learned."""
    # one known-good observation, and hostile ones that must not poison the store
    bad = [
        dict(GOOD, destination={"namespace": "\ud800", "workload": "w"}),
        dict(GOOD, threats=[{"name": "\ud800"}], path="/\udfff"),
        dict(GOOD, method=""),
        dict(GOOD, time=float("nan")),
        dict(GOOD, time=1e400),
        dict(GOOD, body_size=1e400),
    ]
    body = _encode([GOOD, *bad], False)
    status, answer = request(served.port, "POST", "/api/v1/observations", body)
    assert status == 202, answer
    for path in (
        "/api/v1/alerts?limit=1000",
        "/api/v1/allowlist",
        "/api/v1/exchanges",
        "/api/v1/modes",
        "/healthz",
        "/readyz",
    ):
        status, answer = request(served.port, "GET", path)
        assert status == 200, (path, answer[:300])
        _strict_json(answer)
    status, answer = request(served.port, "GET", "/metrics")
    assert status == 200, answer[:300]
    text = answer.decode()
    assert sample(text, 'meshward_errors_total{kind="flush-failed"') == 0
    assert served.server is not None
    learned = served.server.engine.allowlist.export_doc()
    modes = served.server.engine.modes()
    served.stop()
    assert (
        sample(
            served.server.metrics.exposition().decode(), 'meshward_errors_total{kind="close-failed"'
        )
        == 0
    )

    with open_store(served.db) as store:
        assert store.integrity_check() == "ok"
        stored = store.load_profiles()
        assert store.modes() == modes
        store.alerts(limit=10_000)
    again = engine_on(served.db)
    # every profile loads again (rules may merge: a learned "get" is read back as "GET")
    assert (
        sorted(again.allowlist.services)
        == sorted(stored)
        == sorted(s["destination"] for s in learned["services"])
    )
    assert "mesh/cart" in stored


# ---- focused regressions


def _post_status(srv_port: int, body: bytes, content_type: str = "application/json") -> int:
    return request(srv_port, "POST", "/api/v1/observations", body, content_type)[0]


def test_regression_ingest_bodies_that_raised_500(tmp_path: Path) -> None:
    """json.loads raises RecursionError on deep nesting and a plain ValueError (not a
    JSONDecodeError) on integers of over 4300 digits; both escaped the handler as 500s. So
    did int(inf) (OverflowError) for body_size, status or port."""
    srv = ServerThread(str(tmp_path / "m.db"))
    try:
        for body in (
            b"[" * 100_000,
            b"{" * 100_000,
            b"9" * 5000,
            b"[" + b"9" * 5000 + b"]",
            json.dumps([dict(GOOD, body_size=1e400)]).encode(),
            json.dumps([dict(GOOD, status=float("inf"))]).encode(),
            json.dumps([dict(GOOD, source={"port": -1e400})]).encode(),
        ):
            status, answer = request(srv.port, "POST", "/api/v1/observations", body)
            assert status == 202, (body[:40], answer[:200])
            assert json.loads(answer)["accepted"] == 0
    finally:
        srv.stop()


def test_regression_mode_bodies_that_raised_500(tmp_path: Path) -> None:
    """request.json() raised LookupError for an unknown charset in the content type, and the
    same RecursionError / digit-limit ValueError as above: 500s instead of a 400."""
    srv = ServerThread(str(tmp_path / "m.db"))
    try:
        path = "/api/v1/modes/shop"
        cases = [
            (b'{"mode": "enforce"}', "application/json; charset=foo", 200),
            (b'{"mode": ' + b"[" * 100_000, "application/json", 400),
            (b'{"mode": ' + b"9" * 5000 + b"}", "application/json", 400),
            (b'{"mode": "\xff"}', "application/json", 400),
        ]
        for body, kind, want in cases:
            status, answer = request(srv.port, "PUT", path, body, kind)
            assert status == want, (body[:30], kind, answer[:200])
            assert json.loads(answer)
    finally:
        srv.stop()


def test_regression_lone_surrogates_never_reach_store_or_metrics(tmp_path: Path) -> None:
    """A `\\ud800` escape decodes to a lone surrogate, which cannot be encoded as UTF-8. As a
    destination namespace it made every later store flush fail (the dirty profile stayed
    dirty: nothing learned after it was ever saved, and GET /alerts answered 500); as a threat
    name it made /metrics answer 500 for the rest of the process."""
    db = str(tmp_path / "m.db")
    srv = ServerThread(db)
    try:
        batch = [
            dict(GOOD, destination={"namespace": "\ud800", "workload": "w\udfff"}),
            dict(GOOD, threats=[{"name": "Evil\ud800", "evidence": "\udc00"}]),  # dropped
            dict(  # a network event, kept (meshward.core.claims)
                GOOD,
                protocol="icmp",
                threats=[{"name": "ICMP.Flood", "location": "network", "evidence": "\udc00"}],
            ),
            GOOD,
        ]
        status, answer = request(srv.port, "POST", "/api/v1/observations", _encode(batch, True))
        assert (status, json.loads(answer)) == (202, {"accepted": 4, "rejected": 0})
        for path in ("/metrics", "/api/v1/alerts", "/api/v1/allowlist"):
            status, answer = request(srv.port, "GET", path)
            assert status == 200, (path, answer[:200])
    finally:
        srv.stop()
    with open_store(db) as store:
        assert set(store.load_profiles()) == {"\ufffd/w\ufffd", "mesh/cart"}
        threats = [a["threats"][0] for a in store.alerts()]
        assert [(t["name"], t["evidence"]) for t in threats] == [("ICMP.Flood", "\ufffd")]


def test_regression_non_finite_time_is_refused() -> None:
    """A NaN time cannot be stored (alerts.time is NOT NULL and SQLite reads NaN as NULL: every
    later flush failed); an infinite one made the allowlist answer `Infinity`, which is not
    JSON."""
    for t in (float("nan"), float("inf"), "-inf", "nan", 1e400):
        with pytest.raises(ValueError, match="finite"):
            observation_from_dict(dict(GOOD, time=t))
    assert math.isfinite(observation_from_dict(dict(GOOD, time="12.5")).time)


def test_body_b64_that_does_not_decode_is_rejected() -> None:
    for text in ("!!", "QUJ", "QUJD\n", "\ud800"):
        with pytest.raises(ValueError):
            observation_from_dict(dict(GOOD, body_b64=text))
    assert observation_from_dict(dict(GOOD, body_b64=base64.b64encode(b"\xff").decode())).body


def test_regression_empty_method_lost_the_whole_profile_on_restart(tmp_path: Path) -> None:
    """An observation with an empty method taught a rule with no method; its stored document
    then failed to load (a rule needs a method), so after a restart the destination's whole
    allowlist was skipped: in enforce mode every one of its requests would be denied."""
    db = str(tmp_path / "m.db")
    srv = ServerThread(db)
    try:
        batch = [GOOD, dict(GOOD, method=""), {}]
        status, answer = request(srv.port, "POST", "/api/v1/observations", _encode(batch, False))
        assert (status, json.loads(answer)) == (202, {"accepted": 3, "rejected": 0})
    finally:
        srv.stop()
    again = engine_on(db)
    rules = again.allowlist.export_doc()["services"]
    assert [(s["destination"], [e["method"] for e in s["endpoints"]]) for s in rules] == [
        ("mesh/cart", ["POST"]),
        ("unknown", []),
    ]


def test_regression_wrong_json_types_are_refused_not_learned_as_reprs() -> None:
    """str() turned null, numbers and objects into Python reprs: {"method": null} was learned
    as a method "None" (read back as "NONE"), a query object as "{'a': 1}"."""
    for key, value in [
        ("method", None),
        ("path", {"a": 1}),
        ("query", ["a"]),
        ("authority", 7),
        ("request_id", 1.5),
        ("body_b64", None),
        ("protocol", True),
    ]:
        with pytest.raises(ValueError, match=f"{key} must be a string"):
            observation_from_dict(dict(GOOD, **{key: value}))
    with pytest.raises(ValueError, match="workload must be a string"):
        observation_from_dict(dict(GOOD, destination={"workload": None}))
    with pytest.raises(ValueError, match="strings"):
        observation_from_dict(dict(GOOD, headers=[["x-n", 1]]))
    with pytest.raises(ValueError, match="name must be a string"):
        observation_from_dict(dict(GOOD, threats=[{"evidence": "x"}]))
