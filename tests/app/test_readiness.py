"""The enforce-readiness report on a real serve (real HTTP on loopback): recent calls and an
uploaded HAR replayed as if enforced, by service and reason, with nothing learned or alerted
by the replay; the cluster's answer (the kubectl label command); refusals."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from meshward.runtime.client import ApiError
from tests.support.dashboard import call, har, learned_calls
from tests.support.serve import API_TOKEN, api_client, running_server


def _by_service(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["service"]: s for s in report["services"]}


def test_recent_calls_replayed_as_if_enforced_change_nothing() -> None:
    async def main() -> None:
        async with running_server() as srv:
            client = api_client(srv)
            await asyncio.to_thread(client.post_observations, learned_calls())
            await asyncio.to_thread(client.set_mode, "shop", "monitor")
            unseen = [
                call("shop/web", "shop/api", "DELETE", "/users/1"),
                call("shop/web", "shop/api", "DELETE", "/users/2"),  # the same shape
                call("evil/x", "shop/db", "GET", "/rows/7"),
            ]
            await asyncio.to_thread(client.post_observations, unseen)
            alerts = await asyncio.to_thread(client.alerts)
            learned = await asyncio.to_thread(client.allowlist)
            evaluated = srv.engine.counters["evaluated"]
            report = await asyncio.to_thread(client.readiness, "shop")
            assert (report["namespace"], report["mode"], report["from"]) == (
                "shop",
                "enforce",
                "recent",
            )
            assert report["mode_now"] == "monitor"
            assert report["switch"] == {"by": "api", "command": "meshward mode set shop enforce"}
            services = _by_service(report)
            api, db = services["shop/api"], services["shop/db"]
            assert api["would_deny"] == 2 and db["would_deny"] == 1
            assert report["would_deny"] == 3
            # the learned calls stay allowed: 3 x 3 GET/POST into the api (web and billing), 3 rows
            assert api["calls"] == 2 + 3 * 4 and db["calls"] == 1 + 3
            assert report["services"][0]["service"] == "shop/api"  # the most denied first
            (example,) = api["examples"]
            assert (example["method"], example["path"], example["calls"]) == (
                "DELETE",
                "/users/1",
                2,
            )
            assert "unknown-method" in example["reasons"] or "unknown-path" in example["reasons"]
            assert {r["reason"] for r in db["reasons"]} >= {"unknown-source"}
            # in monitor it would alert, not deny
            monitor = await asyncio.to_thread(client.readiness, "shop", "monitor")
            assert (monitor["would_deny"], monitor["would_alert"]) == (0, 3)
            # nothing learned, alerted or counted by the replays
            assert await asyncio.to_thread(client.alerts) == alerts
            assert await asyncio.to_thread(client.allowlist) == learned
            assert srv.engine.counters["evaluated"] == evaluated
            other = await asyncio.to_thread(client.readiness, "billing")
            assert (other["calls"], other["services"]) == (0, [])

    asyncio.run(main())


def test_an_uploaded_har_is_replayed_for_its_namespace() -> None:
    async def main() -> None:
        async with running_server() as srv:
            client = api_client(srv)
            await asyncio.to_thread(client.post_observations, learned_calls())
            upload = har(
                [
                    ("shop/web", "shop/api", "GET", "/users/9"),  # learned as /users/{int}
                    ("shop/web", "shop/api", "PUT", "/users/9"),
                    ("shop/web", "shop/api", "GET", "/admin"),
                    ("shop/api", "billing/ledger", "GET", "/x"),  # another namespace
                ]
            )
            report = await asyncio.to_thread(client.readiness, "shop", "enforce", upload)
            assert report["from"] == "har"
            assert report["har"] == {
                "entries": 4,
                "bad_entries": 0,
                "outside_namespace": 1,
                "left_out": 0,
            }
            api = _by_service(report)["shop/api"]
            assert (api["calls"], api["would_deny"]) == (3, 2)
            assert sorted(e["path"] for e in api["examples"]) == ["/admin", "/users/9"]
            with pytest.raises(ApiError) as bad:
                await asyncio.to_thread(client.readiness, "shop", "enforce", b"{}")
            assert bad.value.status == 400 and "HAR" in bad.value.reason

    asyncio.run(main())


def test_in_a_cluster_the_report_gives_the_label_command() -> None:
    async def main() -> None:
        async with running_server(modes_from_labels=True) as srv:
            client = api_client(srv)
            report = await asyncio.to_thread(client.readiness, "shop")
            assert report["switch"] == {
                "by": "label",
                "command": "kubectl label namespace shop meshward.io/mode=enforce --overwrite",
            }
            with pytest.raises(ApiError) as refused:
                await asyncio.to_thread(client.set_mode, "shop", "enforce")
            assert refused.value.status == 409

    asyncio.run(main())


def test_refused_without_a_credential_and_checked() -> None:
    async def main() -> None:
        async with running_server() as srv, aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{srv.ports['http']}/api/v1/readiness"
            async with s.get(f"{url}/shop") as r:
                assert r.status == 401
            async with s.post(f"{url}/shop", data=har([])) as r:
                assert r.status == 401
            auth = {"Authorization": f"Bearer {API_TOKEN}"}
            for bad in ("Shop", "shop?mode=strict", "shop?since=soon"):
                async with s.get(f"{url}/{bad}", headers=auth) as r:
                    assert r.status == 400, bad
                    assert "error" in json.loads(await r.text())

    asyncio.run(main())
