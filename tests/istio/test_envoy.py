"""Rendered bootstraps in a real Envoy 1.40: validation, traffic, mTLS identity, failure."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.certs import MeshCA, spiffe_id
from meshward.istio.envoyproc import EnvoyError, EnvoyProcess, validate

pytestmark = pytest.mark.integration


def http(port: int, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any] | str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("mode", "direction", "h2", "tls"),
    list(
        itertools.product(
            ("learn", "monitor", "enforce"), ("inbound", "outbound"), (False, True), (False, True)
        )
    ),
)
def test_validate_variants(
    envoy_bin: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    mode: str,
    direction: str,
    h2: bool,
    tls: bool,
) -> None:
    if tls:
        request.getfixturevalue("openssl")
    material = MeshCA(tmp_path).issue("shop", "web") if tls else None
    boot = render_bootstrap(
        15001,
        "app.shop.svc.cluster.local:8080",
        "shop",
        "web",
        mode,
        server_host="meshward.meshward.svc.cluster.local",
        direction=direction,
        upstream_h2=h2,
        tls=material,
    )
    validate(boot, envoy=envoy_bin)


def test_validate_tap_lag_settings(envoy_bin: str) -> None:
    for close_ms, window in ((1, 1), (250, 64), (120_000, 2**31 - 1)):
        boot = render_bootstrap(
            15001,
            "127.0.0.1:8080",
            "shop",
            "web",
            "monitor",
            tap_close_timeout_ms=close_ms,
            tap_stream_window=window,
        )
        validate(boot, envoy=envoy_bin)


def test_validate_rejects_bad_field(envoy_bin: str) -> None:
    boot = render_bootstrap(15001, "127.0.0.1:8080", "shop", "web", "enforce")
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["http_filters"][0]["typed_config"]["no_such_field"] = 1
    with pytest.raises(EnvoyError, match="no_such_field"):
        validate(boot, envoy=envoy_bin)


def test_bad_input_rejected() -> None:
    for upstream in ("nohost", "h:0", "h:99999", ":80"):
        with pytest.raises(ValueError):
            render_bootstrap(0, upstream, "shop", "web", "learn")
    with pytest.raises(ValueError):
        render_bootstrap(70000, "127.0.0.1:1", "shop", "web", "learn")


def test_start_failure_carries_log(envoy_bin: str, echo_app: int) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        boot = render_bootstrap(port, f"127.0.0.1:{echo_app}", "shop", "web", "learn")
        proc = EnvoyProcess(boot, envoy=envoy_bin, start_timeout=10)
        with pytest.raises(EnvoyError, match=r"(?i)address already in use|cannot bind"):
            proc.start()
        assert proc.proc is None and not proc.running


def test_both_ends_with_mtls(
    envoy_bin: str, openssl: None, tmp_path: Path, echo_app: int, meshward_stub: Any
) -> None:
    """web -> [web outbound] -mTLS-> [orders inbound, enforce] -> orders app."""
    rec, authz_port, tap_port = meshward_stub
    ca = MeshCA(tmp_path)
    ports = {"authz_port": authz_port, "tap_port": tap_port}
    inbound = render_bootstrap(
        0,
        f"127.0.0.1:{echo_app}",
        "shop",
        "orders",
        "enforce",
        tls=ca.issue("shop", "orders"),
        **ports,
    )
    with EnvoyProcess(inbound, envoy=envoy_bin, name="orders-in") as callee:
        outbound = render_bootstrap(
            0,
            f"127.0.0.1:{callee.port}",
            "shop",
            "web",
            "enforce",
            direction="outbound",
            tls=ca.issue("shop", "web"),
            **ports,
        )
        with EnvoyProcess(outbound, envoy=envoy_bin, name="web-out") as caller:
            status, echoed = http(caller.port, "/orders?id=7", b'{"item": "book"}')
            assert status == 200, echoed
            assert isinstance(echoed, dict)
            request_id = echoed["headers"]["x-request-id"]
            assert spiffe_id("shop", "web") in echoed["headers"]["x-forwarded-client-cert"]
            status, body = http(caller.port, "/deny-me")
            assert status == 403, body
            # plain-text callers cannot reach the mTLS inbound at all
            with pytest.raises((urllib.error.URLError, ConnectionError)):
                http(callee.port, "/orders")
            # both sidecars report: outbound /orders and /deny-me, inbound /orders
            wait_for(lambda: len([s for s in rec.streams if "response_headers" in s]) >= 3)

        check = rec.checks[0]
        attrs = check.attributes
        assert dict(attrs.context_extensions) == {
            "namespace": "shop",
            "workload": "orders",
            "direction": "inbound",
        }
        assert attrs.source.principal == spiffe_id("shop", "web")
        assert attrs.destination.principal == spiffe_id("shop", "orders")
        assert attrs.request.http.raw_body == b'{"item": "book"}'
        raw = {h.key: h.raw_value for h in attrs.request.http.header_map.headers}
        assert raw["x-request-id"] == request_id.encode()  # encode_raw_headers
        # the tap saw the allowed call from both ends, under one x-request-id
        seen = {
            (s["metadata"]["x-meshward-direction"], s["metadata"]["x-meshward-workload"])
            for s in rec.streams
            if s.get("request_headers", {}).get("x-request-id") == request_id
        }
        assert seen == {("outbound", "web"), ("inbound", "orders")}
        assert callee.stats("http.inbound_orders.ext_authz")  # counters exist
    assert not callee.running


def test_fail_closed_and_fail_open(envoy_bin: str, echo_app: int, closed_port: int) -> None:
    """meshward down: enforce answers 403, learn and monitor pass traffic."""
    for mode, expected in (("enforce", 403), ("learn", 200), ("monitor", 200)):
        boot = render_bootstrap(
            0,
            f"127.0.0.1:{echo_app}",
            "shop",
            "web",
            mode,
            authz_port=closed_port,
            tap_port=closed_port,
        )
        with EnvoyProcess(boot, envoy=envoy_bin) as envoy:
            status, _ = http(envoy.port, "/anything")
            assert status == expected, mode


def test_grpc_upstream(envoy_bin: str, meshward_stub: Any) -> None:
    """A gRPC app behind an h2 inbound sidecar, called through an outbound sidecar."""
    rec, authz_port, tap_port = meshward_stub

    def charge(request: struct_pb2.Struct, context: Any) -> struct_pb2.Struct:
        return struct_pb2.Struct(fields={"ok": struct_pb2.Value(bool_value=True)})

    handler = grpc.method_handlers_generic_handler(
        "demo.Payments",
        {
            "Charge": grpc.unary_unary_rpc_method_handler(
                charge,
                request_deserializer=struct_pb2.Struct.FromString,
                response_serializer=struct_pb2.Struct.SerializeToString,
            )
        },
    )
    app = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    app.add_generic_rpc_handlers((handler,))
    app_port = app.add_insecure_port("127.0.0.1:0")
    app.start()
    ports = {"authz_port": authz_port, "tap_port": tap_port}
    try:
        inbound = render_bootstrap(
            0, f"127.0.0.1:{app_port}", "shop", "payments", "enforce", upstream_h2=True, **ports
        )
        with EnvoyProcess(inbound, envoy=envoy_bin) as callee:
            outbound = render_bootstrap(
                0,
                f"127.0.0.1:{callee.port}",
                "shop",
                "orders",
                "learn",
                upstream_h2=True,
                direction="outbound",
                **ports,
            )
            with (
                EnvoyProcess(outbound, envoy=envoy_bin) as caller,
                grpc.insecure_channel(f"127.0.0.1:{caller.port}") as channel,
            ):
                call = channel.unary_unary(
                    "/demo.Payments/Charge",
                    request_serializer=struct_pb2.Struct.SerializeToString,
                    response_deserializer=struct_pb2.Struct.FromString,
                )
                reply = call(struct_pb2.Struct(), timeout=5)
                assert reply.fields["ok"].bool_value is True
                wait_for(lambda: len([s for s in rec.streams if "response_headers" in s]) >= 2)
        assert rec.checks[0].attributes.request.http.path == "/demo.Payments/Charge"
        for stream in rec.streams:
            assert stream["request_headers"][":path"] == "/demo.Payments/Charge"
            assert stream["request_headers"]["content-type"] == "application/grpc"
            assert stream["response_headers"][":status"] == "200"
    finally:
        app.stop(grace=None)


def test_stuck_envoy_is_killed(tmp_path: Path) -> None:
    """A binary that never becomes ready and ignores SIGTERM: clear error, and it is gone."""
    fake = tmp_path / "envoy"
    fake.write_text("#!/bin/sh\ntrap '' TERM\necho 'pretending to start' >&2\nsleep 60\n")
    fake.chmod(0o755)
    boot = render_bootstrap(0, "127.0.0.1:1", "shop", "web", "learn")
    proc = EnvoyProcess(boot, envoy=str(fake), start_timeout=0.5, stop_grace=0.3)
    proc.launch()
    child = proc.proc
    assert child is not None
    proc.stop()
    assert child.returncode is not None  # SIGKILLed after the grace period
    with pytest.raises(EnvoyError, match="not ready within"):
        EnvoyProcess(boot, envoy=str(fake), start_timeout=0.5, stop_grace=0.3).start()


def test_async_start_and_stop(envoy_bin: str, echo_app: int) -> None:
    boot = render_bootstrap(0, f"127.0.0.1:{echo_app}", "shop", "web", "learn")

    async def scenario() -> EnvoyProcess:
        async with EnvoyProcess(boot, envoy=envoy_bin) as envoy:
            assert envoy.running and envoy.admin_url.startswith("http://127.0.0.1:")
            status, _ = await asyncio.to_thread(http, envoy.port, "/x")
            assert status == 200
        return envoy

    assert not asyncio.run(scenario()).running
