"""The ext_authz decision cache goes through the engine: a detector failure on a cache hit is
`inspection-failed` (alerted, denied in enforce), not a gRPC error a monitor sidecar lets pass."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from meshward.core.bodies import DecodedBody
from meshward.core.engine import Engine
from meshward.core.observation import Observation
from meshward.core.threats.inspection import Inspection
from tests.support.serve import check_request, running_server


class FailsWhenTold:
    """A detector that finds nothing, and raises once `failing` is set (a bug on some input)."""

    def __init__(self) -> None:
        self.failing = False
        self.calls = 0

    def inspect(self, obs: Observation, body: DecodedBody | None = None) -> Inspection:
        self.calls += 1
        if self.failing:
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        return Inspection()


async def _check(port: int, req: external_auth_pb2.CheckRequest) -> external_auth_pb2.CheckResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=5)


@pytest.mark.parametrize("mode", ["monitor", "enforce"])
def test_detector_failure_on_a_cache_hit_is_inspection_failed(mode: str) -> None:
    asyncio.run(_cache_hit_with_failing_detector(mode))


async def _cache_hit_with_failing_detector(mode: str) -> None:
    detector = FailsWhenTold()
    engine = Engine(detector=detector)
    async with running_server(engine=engine) as srv:
        port = srv.ports["authz"]
        await _check(port, check_request("GET", "/items"))  # learned (learn is the default)
        engine.set_mode("shop", mode)
        srv.mode_changed()
        first = await _check(port, check_request("GET", "/items"))  # judged, clean: cached
        assert first.status.code == 0 and len(srv.pipeline.cache) == 1
        detector.failing = True
        calls = detector.calls
        second = await _check(port, check_request("GET", "/items"))  # the same: a cache hit
        assert detector.calls == calls + 1  # the detectors ran on the hit, once
        denied = second.status.code != 0
        assert denied == (mode == "enforce")
        alert = engine.alerts(limit=1)[0]
        assert "inspection-failed" in alert["reasons"] and alert["path"] == "/items"
        assert engine.counters["inspection_failed"] == 1
