"""Issue #11's data-side attacks on a real `meshward serve`: forged threats, alert floods,
unbounded learning, secrets in what is stored and served. Each test fails on the code before
its fix."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from meshward.app.serve import Server
from meshward.runtime.client import ApiClient
from tests.support.metrics import sample
from tests.support.serve import check_request, running_server

FORGED_EVIDENCE = "<img src=x onerror=alert(document.domain)>"


def _api(srv: Server) -> ApiClient:
    return ApiClient(f"http://127.0.0.1:{srv.ports['http']}")


async def _check(
    srv: Server, req: external_auth_pb2.CheckRequest
) -> external_auth_pb2.CheckResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports['authz']}") as ch:
        return await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=5)


def _drops(reason: str, where: str = "ingest") -> str:
    return f'meshward_drops_total{{reason="{reason}",where="{where}"}}'


def _forged(i: int, namespace: str = "shop") -> dict[str, Any]:
    """One observation as the issue's attacker sent it: a harmless request carrying a threat
    (with HTML evidence) and a verdict it chose itself."""
    return {
        "seen_by": "node-tap",
        "source": {"namespace": "evil", "workload": "attacker"},
        "destination": {"namespace": namespace, "workload": "api"},
        "method": "GET",
        "path": "/api/items",
        "request_id": f"forged-{i}",
        "threats": [{"name": "SQL.Injection", "location": "query:id", "evidence": FORGED_EVIDENCE}],
        "verdict": "deny",
        "score": 1.0,
    }


def test_forged_threats_plant_nothing_and_keep_the_real_alerts(tmp_path: Path) -> None:
    """10,000 observations with forged threats: none becomes an alert, the real one stays."""

    async def main() -> None:
        async with running_server(db=str(tmp_path / "m.db"), flush_interval=0.1) as srv:
            api = _api(srv)
            real = check_request("GET", "/api/items?id=1'%20OR%20'1'='1", request_id="real-1")
            assert (await _check(srv, real)).status.code == 0  # learn: alerted, allowed
            forged = [_forged(i) for i in range(10_000)]
            got = await asyncio.to_thread(api.post_observations, forged)
            assert got == {"accepted": 10_000, "rejected": 0}
            await asyncio.sleep(0.3)  # a flush or two: the history is the store's
            alerts = await asyncio.to_thread(api.alerts, 1000)
            assert [a["request_id"] for a in alerts] == ["real-1"]
            assert "SQL.Injection" in {t["name"] for t in alerts[0]["threats"]}
            text = await asyncio.to_thread(api.metrics_text)
            assert sample(text, _drops("client-threats")) == 10_000
            assert sample(text, _drops("client-verdict")) == 20_000

    asyncio.run(main())


def test_a_node_taps_network_event_still_alerts() -> None:
    """The one threat kept from a caller: a network event in packets serve never sees."""

    async def main() -> None:
        async with running_server() as srv:
            flood = {
                "seen_by": "node-tap",
                "protocol": "icmp",
                "source": {"ip": "10.0.0.9"},
                "destination": {"namespace": "shop", "workload": "api"},
                "threats": [{"name": "ICMP.Flood", "location": "network", "evidence": "900 pkt/s"}],
            }
            same_on_http = dict(flood, protocol="http/1.1", method="GET", path="/")
            got = await asyncio.to_thread(_api(srv).post_observations, [flood, same_on_http])
            assert got["accepted"] == 2
            alerts = await asyncio.to_thread(_api(srv).alerts, 10)
            assert [[t["name"] for t in a["threats"]] for a in alerts] == [["ICMP.Flood"]]

    asyncio.run(main())
