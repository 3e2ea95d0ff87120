"""GET /api/v1/exports/{format}: the running serve's allowlist as native policy, behind auth."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
import yaml
from openapi_spec_validator import validate

from meshward.app.auth import ROUTE_PERMISSIONS
from meshward.app.exports import FORMATS, export_engine, render
from meshward.runtime.client import ApiError
from tests.support.learned import sample_engine
from tests.support.serve import api_client, running_server


def test_exports_of_a_running_serve() -> None:
    engine = sample_engine(mode="monitor")
    # what the CLI writes for the same engine: the API's copy-then-export gives the same bytes
    expected = {f: render(export_engine(engine, f), f) for f in FORMATS}

    async def main() -> None:
        async with running_server(engine=engine) as srv:
            client = api_client(srv)

            async def get(path: str) -> str:
                text = await asyncio.to_thread(client.request, "GET", path)
                assert isinstance(text, str)
                return text

            for f in FORMATS:
                assert await get(f"/api/v1/exports/{f}") == expected[f], f
            ap = [d for d in yaml.safe_load_all(await get("/api/v1/exports/authorizationpolicy"))]
            assert [d["kind"] for d in ap] == ["AuthorizationPolicy"]
            assert ap[0]["metadata"]["annotations"] == {"istio.io/dry-run": "true"}
            linkerd = list(
                yaml.safe_load_all(await get("/api/v1/exports/linkerd?destination=shop/api"))
            )
            assert {d["kind"] for d in linkerd} >= {"Server", "HTTPRoute"}
            (doc,) = yaml.safe_load_all(await get("/api/v1/exports/openapi?destination=shop/api"))
            validate(doc)
            for path, status in (
                ("/api/v1/exports/kyverno", 404),
                ("/api/v1/exports/openapi?destination=shop/nope", 404),
                ("/api/v1/exports/openapi?destination=a%20b", 400),
            ):
                with pytest.raises(ApiError) as err:
                    await get(path)
                assert err.value.status == status, path
            # the download as the dashboard saves it, and no answer without the token
            url = f"http://127.0.0.1:{srv.ports['http']}/api/v1/exports/openapi"
            request = urllib.request.Request(
                url, headers={"Authorization": f"Bearer {srv.config.auth.token}"}
            )
            with await asyncio.to_thread(urllib.request.urlopen, request, timeout=5) as r:
                assert r.headers["Content-Type"].startswith("application/yaml")
                assert r.headers["Content-Disposition"] == (
                    'attachment; filename="meshward-openapi.yaml"'
                )
                assert r.headers["X-Meshward-Export-Notes"] == "0"
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
            assert refused.value.code == 401

    asyncio.run(main())


def test_the_route_reads_like_the_allowlist() -> None:
    assert (
        ROUTE_PERMISSIONS[("GET", "/api/v1/exports/{format}")]
        == ROUTE_PERMISSIONS[("GET", "/api/v1/allowlist")]
    )
