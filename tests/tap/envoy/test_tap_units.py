"""The pure parts of the Envoy tap: stream assembly bounds and the both-ends join."""

from __future__ import annotations

import time

from meshward.core.observation import Direction, Identity, Observation
from meshward.core.threats.names import EXCHANGE_MISMATCH
from meshward.tap.envoy.assemble import ExtProcAssembler, StreamContext, TapLimits
from meshward.tap.envoy.extproc import stream_context
from meshward.tap.envoy.join import Joiner
from tests.support.serve import tap_messages


def _assemble(msgs: list, ctx: StreamContext | None = None, **limits: int) -> ExtProcAssembler:
    asm = ExtProcAssembler(ctx or StreamContext("shop", "api"), TapLimits(**limits))
    for m in msgs:
        if asm.feed(m):
            break
    return asm


def test_stream_becomes_one_observation() -> None:
    asm = _assemble(
        tap_messages(
            "POST",
            "/orders?id=3",
            body=b'{"a": 1}',
            chunks=2,
            status=201,
            request_id="rid-1",
            content_type="application/json",
        )
    )
    assert asm.complete
    obs = asm.observation()
    assert obs is not None
    assert (obs.method, obs.path, obs.query, obs.status) == ("POST", "/orders", "id=3", 201)
    assert obs.body == b'{"a": 1}' and not obs.body_truncated and obs.body_size == 8
    assert obs.request_id == "rid-1" and obs.authority == "api.shop"
    assert obs.destination.key == "shop/api"
    assert (obs.source.namespace, obs.source.workload, obs.source.ip, obs.source.port) == (
        "shop",
        "web",
        "10.0.0.2",
        40000,
    )
    assert all(not k.startswith(":") for k, _ in obs.headers)


def test_bounds_flag_truncation() -> None:
    asm = _assemble(tap_messages("POST", "/up", body=b"y" * 5000, chunks=10), max_body=1000)
    obs = asm.observation()
    assert obs is not None and obs.body_truncated and len(obs.body) == 1000
    msgs = tap_messages("GET", "/h")
    for i in range(50):
        msgs[0].request_headers.headers.headers.add(key=f"x-h{i}", raw_value=b"v" * 100)
    obs = _assemble(msgs, max_headers=10).observation()
    assert obs is not None and obs.headers_truncated
    # a response body is awaited only when the filter says it streams one
    ctx = StreamContext("shop", "api", response_body=True)
    assert not _assemble(tap_messages("GET", "/"), ctx).complete


def test_no_request_headers_no_observation() -> None:
    asm = ExtProcAssembler(StreamContext())
    assert asm.observation() is None


def test_metadata_read_leniently() -> None:
    ctx = stream_context(
        (
            ("x-meshward-namespace", "a"),
            ("x-meshward-direction", "sideways"),
            ("x-meshward-workload", b"w\xff"),
        )
    )
    assert (ctx.namespace, ctx.direction, ctx.workload) == ("a", "inbound", "w\ufffd")


def _view(
    direction: Direction, rid: str, path: str = "/p", body: bytes = b"", authority: str = "api.shop"
) -> Observation:
    return Observation(
        seen_by="envoy-tap",
        source=Identity("shop", "web"),
        destination=Identity("shop", "api"),
        method="GET",
        path=path,
        body=body,
        status=200,
        request_id=rid,
        authority=authority,
        direction=direction,
    )


def test_join_pairs_and_flags_mismatch() -> None:
    j = Joiner()
    assert j.add(_view("outbound", "r1")) is None
    joined = j.add(_view("inbound", "r1"))
    assert joined is not None
    ex, threats, inbound = joined
    assert not threats and ex.mismatches == [] and inbound.direction == "inbound"
    assert j.add(_view("inbound", "r2", body=b"a")) is None
    ex, threats, _ = j.add(_view("outbound", "r2", path="/q", body=b"b"))  # type: ignore[misc]
    assert ex.mismatches == ["path", "body_sha256"]
    assert {t.name for t in threats} == {EXCHANGE_MISMATCH}
    assert j.recent()[-1]["request_id"] == "r2"
    # no request id or no direction: nothing to join
    assert j.add(_view("inbound", "")) is None
    assert j.pending() == 0


def test_join_is_bounded_and_expires() -> None:
    j = Joiner(window=0.05, max_pending=10)
    for i in range(100):
        j.add(_view("inbound", f"x{i}"))
    assert j.pending() == 10 and j.evicted == 90
    time.sleep(0.06)
    j.add(_view("inbound", "late"))
    assert j.pending() == 1


def test_propagated_request_id_pairs_each_hop() -> None:
    """ingress -> web -> catalog under one x-request-id: each hop joins with itself only."""
    j = Joiner()
    assert j.add(_view("inbound", "t", "/products/10", authority="catalog")) is None
    assert j.add(_view("inbound", "t", "/api/products/10", authority="web")) is None
    ex, threats, _ = j.add(_view("outbound", "t", "/products/10", authority="catalog"))  # type: ignore[misc]
    assert not threats and ex.inbound["path"] == "/products/10"
    # two calls to one service under one id: the same path is preferred...
    j.add(_view("inbound", "u", "/a", authority="svc"))
    j.add(_view("inbound", "u", "/b", authority="svc"))
    ex, threats, _ = j.add(_view("outbound", "u", "/b", authority="svc"))  # type: ignore[misc]
    assert not threats and ex.inbound["path"] == "/b"
    # ...and with several candidates and none the same, nothing is paired (ambiguous)
    j.add(_view("inbound", "v", "/a", authority="svc"))
    j.add(_view("inbound", "v", "/b", authority="svc"))
    assert j.add(_view("outbound", "v", "/c", authority="svc")) is None


def test_verdicts_before_join_are_kept() -> None:
    j = Joiner()
    j.note_verdict(_view("inbound", "r9"), {"verdict": "deny"})
    j.add(_view("outbound", "r9"))
    ex, _, _ = j.add(_view("inbound", "r9"))  # type: ignore[misc]
    assert ex.verdicts == [{"verdict": "deny"}]
    assert j.recent()[-1]["request_id"] == "r9"


def test_open_streams_share_a_byte_budget() -> None:
    """Per-stream limits times thousands of streams is gigabytes: open streams together hold at
    most the budget; past it bodies are cut and flagged, and a finished stream gives its bytes
    back."""
    from meshward.tap.envoy.assemble import HEADER_FLOOR, ByteBudget

    budget = ByteBudget(100_000)
    big = tap_messages("POST", "/up", body=b"x" * 30_000, chunks=3, complete=False)
    streams = []
    for _ in range(8):  # eight streams of 30 KB against a 100 KB budget, all open at once
        asm = ExtProcAssembler(StreamContext("shop", "api"), TapLimits(), budget)
        for m in big:
            asm.feed(m)
        streams.append(asm)
        assert budget.used <= budget.total
    kept = [len(a.body) for a in streams]
    assert sum(kept) <= 100_000 and kept[0] == 30_000 and kept[-1] == 0, kept
    assert streams[-1].budget_cut and streams[-1].body_truncated
    obs = streams[-1].observation()
    assert obs is not None and obs.path == "/up" and obs.body_truncated  # headers still kept
    fat = tap_messages("GET", "/fat", complete=False)
    for i in range(40):  # 20 KB of headers, the budget spent: the first 8 KiB are kept
        fat[0].request_headers.headers.headers.add(key=f"x-h{i}", raw_value=b"v" * 500)
    asm = ExtProcAssembler(StreamContext("shop", "api"), TapLimits(), budget)
    asm.feed(fat[0])
    obs = asm.observation()
    assert obs is not None and obs.path == "/fat" and asm.budget_cut
    assert sum(len(k) + len(v) for k, v in obs.headers) <= HEADER_FLOOR
    streams.append(asm)
    for asm in streams:
        asm.release()
    assert budget.used == 0
    fresh = ExtProcAssembler(StreamContext("shop", "api"), TapLimits(), budget)
    for m in big:
        fresh.feed(m)
    assert len(fresh.body) == 30_000 and not fresh.budget_cut


def test_tap_copy_of_a_body_ext_authz_saw_in_part_is_judged() -> None:
    """ext_authz gets only the first with_request_body bytes: a payload padded past them was
    never inspected, because the tap's longer copy was skipped as judged by ext_authz."""
    from meshward.app.pipeline import Pipeline
    from meshward.core.engine import Engine
    from meshward.runtime.metrics import Metrics

    pipeline = Pipeline(Engine(), Metrics(), Joiner())
    pipeline.engine.set_mode("shop", "enforce")
    body = b'{"pad": "' + b"x" * 9000 + b'", "q": "1\' union select password from users--"}'

    def view(seen_by: str, cut: int | None) -> Observation:
        return Observation(
            seen_by,
            source=Identity("shop", "web"),
            destination=Identity("shop", "api"),
            method="POST",
            path="/search",
            request_id="rid-7",
            authority="api.shop",
            headers=[("content-type", "application/json"), ("x-request-id", "rid-7")],
            body=body[:cut] if cut else body,
            body_truncated=cut is not None,
            body_size=len(body),
            direction="inbound",
        )

    checked = pipeline.judge_check(view("extauthz", 8192))
    assert not checked.threats and checked.body_partly_inspected
    before = pipeline.engine.counters["alerts"]
    pipeline.take_tap(view("envoy-tap", None))
    assert pipeline.engine.counters["alerts"] == before + 1
    whole = view("extauthz", None)
    whole.request_id = "rid-8"
    pipeline.judge_check(whole)  # judged whole: its tap copy is skipped as before
    tap = view("envoy-tap", None)
    tap.request_id = "rid-8"
    pipeline.take_tap(tap)
    assert pipeline.engine.counters["alerts"] == before + 2  # the ext_authz deny, not the copy
