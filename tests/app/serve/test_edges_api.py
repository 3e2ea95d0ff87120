"""GET /api/v1/edges: every verdict counted per caller -> destination, cache hits included."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from meshward.core.engine import Engine
from meshward.core.threats.inspection import NoDetector
from meshward.runtime.client import ApiError
from tests.support.serve import api_client, check_request, running_server


def test_edges_count_checks_and_cache_hits_and_refuse_bad_times() -> None:
    async def main() -> None:
        async with running_server(engine=Engine(detector=NoDetector())) as srv:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports['authz']}") as ch:
                stub = external_auth_pb2_grpc.AuthorizationStub(ch)
                await stub.Check(check_request("GET", "/known"), timeout=5)  # learned
                await srv.set_mode("shop", "enforce")
                srv.mode_changed()
                for _ in range(3):  # the 2nd and 3rd are decision-cache hits
                    await stub.Check(check_request("GET", "/known"), timeout=5)
                await stub.Check(check_request("GET", "/unknown"), timeout=5)
            client = api_client(srv)
            doc = await asyncio.to_thread(client.request, "GET", "/api/v1/edges?since=10m")
            assert doc["bucket_seconds"] == 60
            (edge,) = doc["edges"]
            assert (edge["source"], edge["destination"]) == ("shop/web", "shop/api")
            assert (edge["allowed"], edge["alerted"], edge["denied"]) == (4, 0, 1)
            later = f"/api/v1/edges?since={time.time() + 120:.0f}"
            assert (await asyncio.to_thread(client.request, "GET", later))["edges"] == []
            for bad in ("since=yesterday", "since=nan", "until=5x"):
                with pytest.raises(ApiError) as err:
                    await asyncio.to_thread(client.request, "GET", f"/api/v1/edges?{bad}")
                assert err.value.status == 400

    asyncio.run(main())
