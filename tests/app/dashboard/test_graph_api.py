"""`GET /api/v1/graph` and `GET /api/v1/alerts/stream` on a real serve (real HTTP on loopback):
the graph of learned traffic per namespace and across all, alerts counted on edges, the
stream sending new alerts as they are raised, and both refused without a credential."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from meshward.app import dashboard
from meshward.app.graph import build_graph
from tests.support.dashboard import call, learned_calls
from tests.support.serve import API_TOKEN, api_client, running_server


def _url(srv: object) -> str:
    return f"http://127.0.0.1:{srv.ports['http']}"  # type: ignore[attr-defined]


def test_graph_of_learned_traffic_per_namespace_and_across_all() -> None:
    async def main() -> None:
        async with running_server() as srv:
            client = api_client(srv)
            await asyncio.to_thread(client.post_observations, learned_calls())
            await asyncio.to_thread(client.set_mode, "shop", "monitor")
            unseen = call("shop/web", "shop/api", "DELETE", "/users/1")  # never learned
            await asyncio.to_thread(client.post_observations, [unseen])
            every = await asyncio.to_thread(client.get, "/api/v1/graph")
            billing = await asyncio.to_thread(client.get, "/api/v1/graph", namespace="billing")
            nodes = {n["id"]: n for n in every["nodes"]}
            assert set(nodes) == {"shop/web", "shop/api", "shop/db", "billing/worker"}
            assert nodes["shop/api"]["mode"] == "monitor" and nodes["shop/api"]["service"]
            assert nodes["shop/api"]["alerts"] == 1
            assert nodes["billing/worker"]["mode"] == "learn"  # the default
            edges = {(e["source"], e["target"]): e for e in every["edges"]}
            web_api = edges["shop/web", "shop/api"]
            assert "POST /orders" in web_api["endpoints"]
            assert any(e.startswith("GET /users/") for e in web_api["endpoints"])
            assert (web_api["alerts"], web_api["status"]) == (1, "alerted")
            assert edges["shop/api", "shop/db"]["status"] == "allowed"
            assert web_api["verdicts"]["alerted"] == 1  # from the per-edge verdict counts
            assert edges["shop/api", "shop/db"]["verdicts"]["allowed"] == 3
            assert every["namespaces"] == ["billing", "shop"]
            # one namespace: the edges into or out of it, the other end marked external
            assert [(e["source"], e["target"]) for e in billing["edges"]] == [
                ("billing/worker", "shop/api")
            ]
            assert {n["id"]: n["external"] for n in billing["nodes"]} == {
                "billing/worker": False,
                "shop/api": True,
            }

    asyncio.run(main())


def test_a_deny_colours_its_edge_denied() -> None:
    doc = {"services": [{"destination": "shop/api", "sources": {"shop/web": {}}, "endpoints": []}]}
    alerts = [
        {"source": "shop/web", "destination": "shop/api", "verdict": "deny"},
        {"source": "evil/x", "destination": "shop/api", "verdict": "alert"},
    ]
    graph = build_graph(doc, alerts, {"shop": "enforce"}, "learn")
    status = {e["id"]: e["status"] for e in graph["edges"]}
    # a caller that was only refused (it taught nothing) still shows as an edge
    assert status == {"shop/web->shop/api": "denied", "evil/x->shop/api": "alerted"}


def test_graph_and_stream_refuse_without_a_credential_and_check_the_namespace() -> None:
    async def main() -> None:
        async with running_server() as srv, aiohttp.ClientSession() as s:
            for path in ("/api/v1/graph", "/api/v1/alerts/stream", "/dashboard/"):
                async with s.get(_url(srv) + path) as r:
                    assert r.status == 401, path
            auth = {"Authorization": f"Bearer {API_TOKEN}"}
            for bad in ("namespace=<b>", "window=0", "window=nan", "window=x"):
                async with s.get(_url(srv) + "/api/v1/graph?" + bad, headers=auth) as r:
                    assert r.status == 400, bad

    asyncio.run(main())


async def _events(response: aiohttp.ClientResponse) -> asyncio.Queue[tuple[str, dict]]:
    queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    async def read() -> None:
        name = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                await queue.put((name, json.loads(line[6:])))

    asyncio.get_running_loop().create_task(read())
    return queue


def test_the_stream_sends_each_new_alert_once_filtered_by_namespace() -> None:
    async def main() -> None:
        async with running_server() as srv, aiohttp.ClientSession() as s:
            client = api_client(srv)
            await asyncio.to_thread(client.post_observations, learned_calls())
            for ns in ("shop", "billing"):
                await asyncio.to_thread(client.set_mode, ns, "monitor")
            auth = {"Authorization": f"Bearer {API_TOKEN}"}
            url = _url(srv) + "/api/v1/alerts/stream?namespace=shop"
            async with s.get(url, headers=auth) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                events = await _events(r)
                assert await asyncio.wait_for(events.get(), 5) == ("ready", {})
                other = call("shop/web", "billing/ledger", "GET", "/x")  # another namespace
                odd = call("shop/web", "shop/api", "DELETE", "/users/1")
                await asyncio.to_thread(client.post_observations, [other, odd])
                name, alert = await asyncio.wait_for(events.get(), 5)
                assert name == "alert"
                assert (alert["destination"], alert["method"]) == ("shop/api", "DELETE")
                await asyncio.sleep(1.2)  # two more polls: nothing is sent twice
                assert events.empty()

    asyncio.run(main())


def test_streams_are_bounded_and_end_when_serve_stops() -> None:
    async def main() -> None:
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with aiohttp.ClientSession() as s:
            async with running_server() as srv:
                from meshward.app.dashboard import STREAMS_KEY

                assert srv._runner is not None
                srv._runner.app[STREAMS_KEY].most = 1
                url = _url(srv) + "/api/v1/alerts/stream"
                first = await s.get(url, headers=auth)
                events = await _events(first)
                assert (await asyncio.wait_for(events.get(), 5))[0] == "ready"
                async with s.get(url, headers=auth) as second:
                    assert second.status == 503
            # serve stopped (within the fixture's grace, not aiohttp's 60 s shutdown timeout)
            assert await asyncio.wait_for(first.content.read(), 5) == b""
            first.close()

    asyncio.run(main())


def test_a_missing_bundle_answers_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard, "ASSETS", tmp_path)  # an installation without the bundle

    async def main() -> None:
        async with running_server() as srv, aiohttp.ClientSession() as s:
            auth = {"Authorization": f"Bearer {API_TOKEN}"}
            async with s.get(_url(srv) + "/dashboard/", headers=auth) as r:
                assert r.status == 503
                assert "dashboard is not built" in await r.text()
            async with s.get(_url(srv) + "/dashboard/..%2fapi.py", headers=auth) as r:
                assert r.status == 404  # only the bundle's own file names
            async with s.get(_url(srv) + "/api/v1/graph", headers=auth) as r:
                assert r.status == 200  # the API works without it

    asyncio.run(main())


def test_edges_are_coloured_by_the_verdict_counts_of_the_window() -> None:
    doc = {"services": [{"destination": "shop/api", "sources": {"shop/web": {}}, "endpoints": []}]}
    counts = [
        {"time": 0, "source": "shop/web", "destination": "shop/api", "allowed": 9, "alerted": 1},
        {"time": 60, "source": "shop/web", "destination": "shop/api", "allowed": 2},
        {"time": 60, "source": "evil/x", "destination": "shop/api", "denied": 4},
    ]
    graph = build_graph(doc, [], {}, "learn", verdicts=counts)
    edges = {e["id"]: e for e in graph["edges"]}
    assert edges["shop/web->shop/api"]["verdicts"] == {"allowed": 11, "alerted": 1, "denied": 0}
    assert edges["shop/web->shop/api"]["status"] == "alerted"
    assert edges["evil/x->shop/api"]["status"] == "denied"  # refused: learned nothing, shown


def test_the_control_plane_and_bypasses_are_marked_in_the_graph() -> None:
    """What the node tap's mesh guard sends (a quiet connection report, a control-plane alert,
    a bypass alert) makes istiod a control-plane node with its edges, and counts the bypass."""
    from meshward.core.controlplane import CONNECTION, REPORT_KEY
    from meshward.core.observation import Identity, Observation, Threat, observation_to_dict
    from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS, MESH_SIDECAR_BYPASS

    istiod = Identity("istio-system", "istiod", ip="10.0.0.9", port=15012)
    where = {"mesh": "istio", "component": "istiod"}
    report = Observation(
        seen_by="node-tap",
        source=Identity("shop", "web", ip="10.0.0.2", port=40000),
        destination=istiod,
        protocol="tcp",
        extra={REPORT_KEY: CONNECTION, **where},
    )
    snoop = Observation(
        seen_by="node-tap",
        source=Identity("shop", "debug", ip="10.0.0.3", port=40001),
        destination=Identity("istio-system", "istiod", ip="10.0.0.9", port=15014),
        protocol="tcp",
        threats=[Threat(MESH_CONTROL_PLANE_ACCESS, "network", "no sidecar on 15014")],
        extra=dict(where),
    )
    bypass = Observation(
        seen_by="node-tap",
        source=Identity(ip="10.0.0.3", port=40002),
        destination=Identity("shop", "api", ip="10.0.0.5", port=8080),
        protocol="http/1.1",
        method="GET",
        path="/orders",
        threats=[Threat(MESH_SIDECAR_BYPASS, "network", "around its proxy")],
    )

    async def main() -> None:
        async with running_server() as srv:
            client = api_client(srv)
            await asyncio.to_thread(client.set_mode, "shop", "enforce")
            done = await asyncio.to_thread(
                client.post_observations, [observation_to_dict(o) for o in (report, snoop, bypass)]
            )
            assert done["accepted"] == 3, done
            graph = await asyncio.to_thread(client.get, "/api/v1/graph")
            nodes = {n["id"]: n for n in graph["nodes"]}
            assert nodes["istio-system/istiod"]["role"] == "control-plane"
            assert nodes["istio-system/istiod"]["component"] == "istio istiod"
            assert nodes["shop/web"]["role"] == "workload"
            edges = {(e["source"], e["target"]): e for e in graph["edges"]}
            quiet = edges["shop/web", "istio-system/istiod"]
            assert (quiet["kind"], quiet["status"], quiet["verdicts"]["allowed"]) == (
                "control-plane",
                "allowed",
                1,
            )
            assert edges["shop/debug", "istio-system/istiod"]["status"] == "alerted"
            assert edges["10.0.0.3", "shop/api"]["bypass"] == 1
            assert edges["10.0.0.3", "shop/api"]["kind"] == "service"
            assert all(
                s.get("destination") != "istio-system/istiod"
                for s in (await asyncio.to_thread(client.get, "/api/v1/allowlist")).get(
                    "services", []
                )
            )

    asyncio.run(main())


def test_an_alert_is_the_same_before_and_after_its_store_wrote_it() -> None:
    # the stream reads pending and stored alerts alike: the store's row id and replica must
    # not make a written alert new again (it was sent twice, and counted twice on its edge)
    pending = {"source": "shop/web", "destination": "shop/api", "time": 1.5, "verdict": "alert"}
    stored = {**pending, "id": 7, "replica": "meshward-0"}
    assert dashboard._fingerprint(pending) == dashboard._fingerprint(stored)
    assert dashboard._fingerprint(pending) != dashboard._fingerprint({**pending, "time": 2.5})
