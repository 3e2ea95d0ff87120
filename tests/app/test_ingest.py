"""The ingest worker's hand-over: the body goes through a private spool file, gone afterwards."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import pickle
import stat
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.app import ingest, sigcache
from meshward.app.batchapply import BatchDoor
from meshward.app.ingest import DEFAULT_SHARE, Ingestor
from meshward.app.pipeline import Pipeline
from meshward.core.bodies import decode_body
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Verdict, observation_from_dict
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.join import Joiner
from tests.support.ingest import big_batch, mixed_batch
from tests.support.serve import check_request, running_server


def test_the_body_is_spooled_privately_parsed_in_the_worker_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_mkstemp = ingest.tempfile.mkstemp

    def mkstemp(**kw: object) -> tuple[int, str]:
        fd, path = real_mkstemp(**kw)  # type: ignore[arg-type]
        seen.append(stat.S_IMODE(os.stat(path).st_mode))
        return fd, path

    item = {
        "source": {"namespace": "a", "workload": "b"},
        "destination": {"namespace": "shop", "workload": "api"},
        "request": {"method": "GET", "path": "/items"},
    }
    line = json.dumps(item).encode() + b"\n"
    body = line * 3 + b"not json\n"
    ingestor = Ingestor(None, spool=str(tmp_path))  # no engine: the loop judges the chunks
    engine = Engine()
    door = BatchDoor(engine, Metrics(), Joiner(), Pipeline(engine, Metrics(), Joiner()))

    async def main() -> ingest.Parsed:
        try:
            # chunks cut mid-line: the worker sees the body whole
            parsed, judged = await ingestor.ingest([body[:10], body[10:100], body[100:]], door)
            assert judged is None
            return parsed
        finally:
            ingestor.close()

    monkeypatch.setattr(ingest.tempfile, "mkstemp", mkstemp)
    parsed = asyncio.run(main())
    assert parsed.not_json == 1 and parsed.bad_count == 0
    assert sum(len(ingest.pickle.loads(c)) for c in parsed.chunks) == 3
    assert seen == [0o600]
    assert list(tmp_path.iterdir()) == []  # removed once parsed


def test_judging_rests_the_loop_between_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """After each SLICE of judging the loop blocks for PAUSE (at least uvloop's 1 ms timer
    resolution, so it really sleeps rather than only yielding), so a batch's judging never holds
    the Checks' loop for long nor takes its CPU in one run; every item is still judged once."""
    rests: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        rests.append(delay)
        await real_sleep(0)

    def busy(_obs: object, _inspected: object) -> bool:
        end = ingest.time.perf_counter() + ingest.SLICE / 4
        while ingest.time.perf_counter() < end:
            pass
        return True

    items = [(i, None) for i in range(40)]
    parsed = ingest.Parsed(
        chunks=[ingest.pickle.dumps(items[:25]), ingest.pickle.dumps(items[25:])]
    )
    monkeypatch.setattr(ingest.asyncio, "sleep", sleep)
    taken = asyncio.run(Ingestor(None).judge(parsed, busy, lambda i, e: None))  # type: ignore[arg-type]
    assert taken == 40
    assert 7 <= len(rests) <= 40  # one per slice: 4 items of a quarter slice or fewer
    assert set(rests) == {ingest.PAUSE} and ingest.PAUSE >= 0.001


def test_with_no_check_to_answer_judging_only_yields_until_one_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No Check in the last ANSWERING seconds: nobody waits, so the loop judges FREE_SLICE at
    a time and only yields (ingest keeps its throughput); once a Check arrives it rests again."""
    rests: list[float] = []
    real_sleep = asyncio.sleep
    last = ctypes.c_double(0.0)  # serve's latest Check: none yet

    async def sleep(delay: float) -> None:
        rests.append(delay)
        await real_sleep(0)

    def busy(obs: object, _inspected: object) -> bool:
        end = ingest.time.perf_counter() + ingest.FREE_SLICE / 4
        while ingest.time.perf_counter() < end:
            pass
        if obs == 20:
            last.value = ingest.time.monotonic()  # a Check is answered meanwhile
        return True

    parsed = ingest.Parsed(chunks=[ingest.pickle.dumps([(i, None) for i in range(40)])])
    monkeypatch.setattr(ingest.asyncio, "sleep", sleep)
    judge = Ingestor(None, last_check=last).judge(parsed, busy, lambda i, e: None)  # type: ignore[arg-type]
    assert asyncio.run(judge) == 40
    first_rest = rests.index(ingest.PAUSE)
    assert 1 <= first_rest <= 20 and set(rests[:first_rest]) == {0}  # FREE_SLICE each
    assert set(rests[first_rest:]) == {ingest.PAUSE} and len(rests) - first_rest >= 15


def _judged(
    items: list[dict[str, Any]], in_worker: bool, threats: bool, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """One serve-like engine and pipeline judges `items` after learning a first round of them;
    `in_worker`: decoded and inspected by `ingest.parse` and handed over pickled, as serve's
    ingest worker does; else all on the loop."""
    config = EngineConfig(max_body=2048, threats=threats)
    engine = Engine(config, sigcache.detector(config))  # compiled signatures from disk
    pipeline = Pipeline(engine, Metrics(), Joiner())
    for obs in (observation_from_dict(it) for it in items[::2]):  # profiles to score against
        pipeline.take_ingested(obs)
    engine.set_mode("mon", "monitor")
    engine.set_mode("enf", "enforce")
    engine.drain()
    verdicts: list[Verdict] = []
    real_evaluate = engine.evaluate

    def evaluate(*a: Any, **kw: Any) -> Verdict:
        verdicts.append(real_evaluate(*a, **kw))
        return verdicts[-1]

    monkeypatch.setattr(engine, "evaluate", evaluate)
    raw = b"\n".join(json.dumps(it).encode() for it in items)
    if in_worker:
        monkeypatch.setattr(ingest, "_engine", Engine(config, engine.detector))
        parsed = ingest.parse(raw)
        pairs = [pair for chunk in parsed.chunks for pair in pickle.loads(chunk)]
        assert all(p is not None for _, p in pairs)
    else:
        pairs = [(observation_from_dict(it), None) for it in items]
    for obs, prepared in pairs:
        pipeline.take_ingested(obs, prepared)
    monkeypatch.undo()
    changes = engine.drain()
    return verdicts, changes.alerts, changes.profiles, engine.counters, engine.refused


@pytest.mark.parametrize("threats", [True, False], ids=["detectors", "no-detectors"])
def test_what_the_worker_prepares_judges_exactly_as_the_loop_would(
    threats: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker decodes the body (plaintext, features, shape) and runs the detectors; the
    loop only decides, learns and records. Same batch, same state: the same verdicts, alerts,
    learned profiles and counters as judging it all on the loop."""
    items = mixed_batch()
    on_loop = _judged(items, False, threats, monkeypatch)
    handed_over = _judged(items, True, threats, monkeypatch)
    verdicts = on_loop[0]
    assert len(verdicts) == len(items)
    assert {v.verdict for v in verdicts} == {"allow", "alert", "deny"}
    assert any(v.body_partly_inspected for v in verdicts)
    assert on_loop[2]  # something was learned
    assert handed_over == on_loop


def test_a_pickled_json_body_keeps_its_shape_and_refuses_an_unwalked_walk() -> None:
    """What crosses to the loop is the shape (all learning and scoring read); the document
    stays in the worker, so a later walk of the copy's fields fails loudly, never empty."""
    body = decode_body("application/json", b'{"a": [1, "x"], "b": {"c": true}}')
    copy = pickle.loads(pickle.dumps(body))
    assert list(copy.leaf_classes()) == list(body.leaf_classes())
    assert copy.typed() == body.typed() and copy.partial == body.partial
    with pytest.raises(ValueError):
        copy.fields  # noqa: B018
    body.fields  # noqa: B018  (walked before pickling: they cross too)
    assert pickle.loads(pickle.dumps(body)).fields == body.fields


def test_what_the_worker_hands_the_loop_is_no_bigger_than_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop holds a batch's pickled chunks while it judges them: the observations and
    what was prepared for them, not the parsed JSON documents of their bodies as well."""
    raw = big_batch(500)
    config = EngineConfig()
    monkeypatch.setattr(ingest, "_engine", Engine(config, sigcache.detector(config)))
    parsed = ingest.parse(raw)
    handed = sum(len(c) for c in parsed.chunks)
    assert sum(len(pickle.loads(c)) for c in parsed.chunks) == 500
    assert handed < len(raw), (handed, len(raw))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_JSON, max_size=6), st.sampled_from(["", " ", "\n", " \t\r\n"]))
def test_an_array_read_item_by_item_is_what_json_loads_reads(items: list[Any], ws: str) -> None:
    """The worker reads a JSON array an item at a time (resting between them while Checks
    flow): the same items as one json.loads."""
    text = "[" + ws + ("," + ws).join(json.dumps(i) for i in items) + ws + "]"
    paced: list[int] = []
    assert ingest.parse_batch(text.encode(), lambda: paced.append(1)) == (json.loads(text), 0)
    assert len(paced) == len(items)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='[]{},:"0123456789 \n\ttrufalsn-.eE\\x', max_size=40))
def test_a_broken_array_is_refused_whole_as_json_loads_refuses_it(tail: str) -> None:
    text = "[" + tail
    try:
        want: tuple[list[Any], int] = (json.loads(text.strip()), 0)
    except (ValueError, RecursionError):
        want = ([], 1)
    assert ingest.parse_batch(text.encode()) == want


def test_the_worker_rests_only_while_checks_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    """At `share` of a CPU: after each WORK of work a rest of WORK * (1 - share) / share, while a
    Check came in the last ANSWERING seconds; no rest otherwise, nor at a share of 1."""
    rests: list[float] = []
    monkeypatch.setattr(ingest.time, "sleep", rests.append)
    last_check = ctypes.c_double(0.0)
    monkeypatch.setattr(ingest, "_last_check", last_check)

    def work(share: float, since_check: float) -> list[float]:
        rests.clear()
        monkeypatch.setattr(ingest, "_rest", ingest.rest_for(share))
        last_check.value = time.monotonic() - since_check
        end = time.perf_counter() + 10 * ingest.WORK
        while time.perf_counter() < end:
            ingest.pace()
        return list(rests)

    assert ingest.rest_for(0.5) == pytest.approx(ingest.WORK)
    rested = work(0.25, 0.0)
    assert 5 <= len(rested) <= 11  # one a WORK (the fake sleep takes no time)
    assert all(r == pytest.approx(3 * ingest.WORK) for r in rested)
    assert work(0.25, ingest.ANSWERING + 1) == []  # nobody waits: full speed
    assert work(1.0, 0.0) == []


def test_serve_shares_the_time_of_its_latest_check_with_the_worker() -> None:
    """The Check service writes each Check's time where the ingest worker reads it."""

    async def main() -> None:
        async with running_server() as srv:
            assert srv.ingestor.last_check is srv.check.last_check
            assert srv.ingestor.share == DEFAULT_SHARE
            before = time.monotonic()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports['authz']}") as ch:
                stub = external_auth_pb2_grpc.AuthorizationStub(ch)
                await stub.Check(check_request("GET", "/items"), timeout=10)
            assert srv.check.last_check.value >= before

    asyncio.run(main())


def test_ingest_share_is_a_fraction_of_one_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshward.app.commands import UsageError
    from meshward.app.commands.serve import _ingest_share

    monkeypatch.delenv("MESHWARD_INGEST_SHARE", raising=False)
    assert _ingest_share(None) == DEFAULT_SHARE == 0.25  # as `serve --help` says
    assert _ingest_share(0.2) == 0.2
    monkeypatch.setenv("MESHWARD_INGEST_SHARE", "1")
    assert _ingest_share(None) == 1.0
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(UsageError, match="--ingest-share must be"):
            _ingest_share(bad)
    monkeypatch.setenv("MESHWARD_INGEST_SHARE", "half")
    with pytest.raises(UsageError, match="is not a number"):
        _ingest_share(None)
    with pytest.raises(ValueError, match="fraction of one CPU"):
        Ingestor(None, share=0)
