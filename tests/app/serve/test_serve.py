"""`meshward serve` in-process over real gRPC and HTTP on loopback (no Envoy needed)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from meshward.app.serve import Server
from meshward.core.observation import Identity, Observation, observation_to_dict
from meshward.core.threats.inspection import NoDetector
from meshward.runtime.client import ApiError
from tests.support.serve import api_client, check_request, running_server, tap_messages

CHECK = "/envoy.service.auth.v3.Authorization/Check"


async def _check(port: int, req: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=5)


async def _put_mode(srv: Server, ns: str, mode: str) -> int:
    client = api_client(srv)
    try:
        await asyncio.to_thread(client.set_mode, ns, mode)
    except ApiError as exc:
        return exc.status or 0
    return 200


def test_learn_then_enforce_over_grpc() -> None:
    async def main() -> None:
        async with running_server() as srv:
            port = srv.ports["authz"]
            for _ in range(3):
                r = await _check(port, check_request("GET", "/api/items?page=1"))
                assert r.status.code == 0 and r.HasField("ok_response")
            assert await _put_mode(srv, "shop", "enforce") == 200
            ok = await _check(port, check_request("GET", "/api/items?page=2"))
            assert ok.status.code == 0
            bad = await _check(port, check_request("GET", "/admin/dump"))
            assert bad.status.code == 7  # PERMISSION_DENIED
            assert bad.denied_response.status.code == 403
            hdrs = {h.header.key: h.header.value for h in bad.denied_response.headers}
            assert not [k for k in hdrs if k.startswith("x-meshward")]  # the caller learns nothing
            assert json.loads(bad.denied_response.body) == {
                "error": "denied by meshward",
                "request_id": "",
            }
            # the same clean GET again is served from the decision cache
            await _check(port, check_request("GET", "/api/items?page=2"))
            text = srv.metrics.exposition().decode()
            assert 'meshward_decision_cache_total{result="hit"} 1.0' in text
            assert 'meshward_checks_total{result="denied"} 1.0' in text

    asyncio.run(main())


def test_bad_messages_are_counted_and_serving_goes_on() -> None:
    async def main() -> None:
        async with running_server() as srv:
            port = srv.ports["authz"]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                raw = ch.unary_unary(CHECK, request_serializer=None, response_deserializer=None)
                for junk in (b"\xff\xff\xff\xff", b"\x0a\x05\x12\x03", b"\x00" * (5 << 20)):
                    try:
                        await raw(junk, timeout=5)
                        raise AssertionError("junk accepted")
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                # invalid UTF-8 in a raw header value is fine (raw_value bytes)
                req = check_request("GET", "/x", headers=[("x-odd", b"\xff\xfe")])
                r = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=5)
                assert r.status.code == 0
            text = srv.metrics.exposition().decode()
            assert 'meshward_errors_total{kind="undecodable-check",where="extauthz"} 2.0' in text
            assert 'meshward_errors_total{kind="oversized-check",where="extauthz"} 1.0' in text

    asyncio.run(main())


def test_reflection_is_off_by_default() -> None:
    """Reflection tells anyone who can connect what the ports serve: only on when asked."""

    async def main() -> None:
        async with running_server() as srv:
            for name in ("authz", "tap"):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports[name]}") as ch:
                    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
                    call = stub.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                    )
                    try:
                        async for _ in call:
                            raise AssertionError("reflection answered")
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == grpc.StatusCode.UNIMPLEMENTED

    asyncio.run(main())


def test_health_and_reflection_are_served() -> None:
    async def main() -> None:
        async with running_server(grpc_reflection=True) as srv:
            for name, service in (
                ("authz", "envoy.service.auth.v3.Authorization"),
                ("tap", "envoy.service.ext_proc.v3.ExternalProcessor"),
            ):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports[name]}") as ch:
                    h = await health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=5
                    )
                    assert h.status == health_pb2.HealthCheckResponse.SERVING
                    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
                    call = stub.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                    )
                    async for resp in call:
                        names = {s.name for s in resp.list_services_response.service}
                        assert service in names
                        break
                    call.cancel()

    asyncio.run(main())


async def _tap(
    port: int,
    msgs: list[external_processor_pb2.ProcessingRequest],
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    """Send one stream the way Envoy does, without half-closing: the server must end it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = external_processor_pb2_grpc.ExternalProcessorStub(ch)
        md = (("x-meshward-namespace", "shop"), ("x-meshward-workload", "api"), *metadata)
        call = stub.Process(metadata=md)
        for m in msgs:
            await call.write(m)
        async for _ in call:  # the server sends nothing and ends the stream
            pass
        assert await call.code() == grpc.StatusCode.OK


def test_tap_assembles_learns_and_ends_streams(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server() as srv:
            port = srv.ports["tap"]
            body = json.dumps({"sku": "a-1", "qty": 2}).encode()
            await asyncio.wait_for(
                _tap(
                    port,
                    tap_messages(
                        "POST",
                        "/orders",
                        body=body,
                        chunks=3,
                        content_type="application/json",
                        request_id="r1",
                    ),
                ),
                timeout=5,
            )
            doc = srv.engine.allowlist.export_doc()
            assert [s["destination"] for s in doc["services"]] == ["shop/api"]
            rules = json.dumps(doc)
            assert "/orders" in rules and "POST" in rules
            text = srv.metrics.exposition().decode()
            assert 'meshward_tap_streams_total{outcome="complete"} 1.0' in text

    asyncio.run(main())


def test_tap_bounds_body_and_expires_streams() -> None:
    from meshward.tap.envoy.assemble import TapLimits

    seen: list[Observation] = []

    async def main() -> None:
        limits = TapLimits(max_body=100)
        async with running_server(tap_limits=limits, tap_stream_timeout=0.3) as srv:

            def sink(obs: Observation) -> None:
                seen.append(obs)
                srv.pipeline.take_tap(obs)

            srv.tap.sink = sink
            port = srv.ports["tap"]
            await _tap(port, tap_messages("POST", "/up", body=b"x" * 1000, chunks=4))
            assert seen[-1].body_truncated and len(seen[-1].body) == 100
            assert seen[-1].body_size == 1000 and seen[-1].status == 200
            # a stream whose response never comes expires; what was seen is still handed on
            await asyncio.wait_for(_tap(port, tap_messages("GET", "/slow", complete=False)), 5)
            assert seen[-1].path == "/slow" and seen[-1].outcome == "expired"
            learned = json.dumps(srv.engine.allowlist.export_doc())
            assert "/up" in learned and "/slow" not in learned  # incomplete: judged, not learned
            text = srv.metrics.exposition().decode()
            assert 'meshward_tap_streams_total{outcome="expired"} 1.0' in text

    asyncio.run(main())


def test_http_api(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server(max_ingest_bytes=64 * 1024) as srv:
            good = observation_to_dict(
                Observation(
                    seen_by="node-tap",
                    destination=Identity("mesh", "cart"),
                    method="GET",
                    path="/cart",
                    source=Identity("mesh", "web"),
                )
            )
            api = api_client(srv)

            async def status(
                method: str, path: str, doc: object = None, body: bytes | None = None
            ) -> int:
                try:
                    await asyncio.to_thread(api.request, method, path, doc, body=body)
                except ApiError as exc:
                    assert exc.status is not None, exc
                    return exc.status
                return 200

            for path in ("/healthz", "/readyz"):
                assert await status("GET", path) == 200
            got = await asyncio.to_thread(api.post_observations, [good, {"seen_by": "martian"}, 7])
            assert got == {"accepted": 1, "rejected": 2}
            lines = json.dumps(good) + "\nnot json\n" + json.dumps(good) + "\n"
            got = await asyncio.to_thread(api.post_observations, lines.encode())
            assert got == {"accepted": 2, "rejected": 1}
            assert await status("POST", "/api/v1/observations", body=b"[" * 100_000) == 413
            doc = await asyncio.to_thread(api.allowlist)
            assert [x["destination"] for x in doc["services"]] == ["mesh/cart"]
            assert await status("PUT", "/api/v1/modes/mesh", {"mode": "monitor"}) == 200
            assert await status("PUT", "/api/v1/modes/mesh", {"mode": "chaos"}) == 400
            assert await status("PUT", "/api/v1/modes/Bad_NS", {"mode": "learn"}) == 400
            assert (await asyncio.to_thread(api.modes))["modes"] == {"mesh": "monitor"}
            novel = dict(good, path="/cart/../../etc/passwd")
            assert (await asyncio.to_thread(api.post_observations, [novel]))["accepted"] == 1
            alerts = await asyncio.to_thread(api.alerts, 5)
            assert alerts and alerts[0]["verdict"] == "alert"
            assert await status("GET", "/api/v1/alerts?limit=x") == 400
            text = await asyncio.to_thread(api.metrics_text)
            for name in (
                "meshward_checks",
                "meshward_verdicts_total",
                "meshward_check_seconds_bucket",
                "meshward_tap_streams",
                "meshward_drops_total",
            ):
                assert name in text

    asyncio.run(main())


def test_restart_keeps_learned_rules(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")

    async def main() -> None:
        async with running_server(db=db, detector=NoDetector()) as srv:
            await _check(srv.ports["authz"], check_request("GET", "/kept"))
            await srv.set_mode("shop", "enforce")
        async with running_server(db=db, detector=NoDetector()) as srv:
            assert srv.engine.mode_of("shop") == "enforce"
            r = await _check(srv.ports["authz"], check_request("GET", "/kept"))
            assert r.status.code == 0
            r = await _check(srv.ports["authz"], check_request("GET", "/never"))
            assert r.denied_response.status.code == 403

    asyncio.run(main())


def test_tap_junk_ends_only_that_stream() -> None:
    async def main() -> None:
        async with running_server() as srv:
            port = srv.ports["tap"]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                raw = ch.stream_stream(
                    "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
                    request_serializer=None,
                    response_deserializer=None,
                )
                call = raw()
                await call.write(b"\xff\xff\xff")
                async for _ in call:
                    pass
                assert await call.code() == grpc.StatusCode.OK
            await asyncio.wait_for(_tap(port, tap_messages("GET", "/after")), 5)
            text = srv.metrics.exposition().decode()
            assert 'meshward_errors_total{kind="undecodable-message",where="tap"} 1.0' in text
            assert 'meshward_tap_streams_total{outcome="complete"} 1.0' in text

    asyncio.run(main())


def test_check_without_context_extensions_uses_grpc_metadata() -> None:
    """An ext_authz filter configured without context_extensions still names the namespace and
    workload through the gRPC metadata meshward's filter config also sets; a gRPC call is read
    by service and method."""
    seen: list[Observation] = []

    async def main() -> None:
        async with running_server() as srv:
            judge = srv.check.judge
            srv.check.judge = lambda obs: seen.append(obs) or judge(obs)  # type: ignore[func-returns-value]
            req = check_request(
                "POST", "/shop.Cart/Add", headers=[("content-type", b"application/grpc+proto")]
            )
            req.attributes.context_extensions.clear()
            md = (("x-meshward-namespace", "shop"), ("x-meshward-workload", "cart"))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports['authz']}") as ch:
                r = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                    req, metadata=md, timeout=5
                )
            assert r.status.code == 0
            r = await _check(srv.ports["authz"], check_request("GET", "/x", workload="api"))
            assert r.status.code == 0

    asyncio.run(main())
    first, second = seen
    assert first.destination.key == "shop/cart" and first.protocol == "grpc"
    assert (first.grpc_service, first.grpc_method) == ("shop.Cart", "Add")
    assert second.destination.key == "shop/api" and second.grpc_service == ""
