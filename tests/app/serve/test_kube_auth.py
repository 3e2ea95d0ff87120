"""`meshward serve --auth kubernetes` on a real kube-apiserver (v1.20): ServiceAccount tokens
checked with TokenReview (audience `meshward`), each route authorized with a
SubjectAccessReview against the install's ClusterRoles, verdicts cached, `PUT /api/v1/modes`
refused with the label named, and 503 (nothing let through) when the API server is away.
serve reviews with exactly the install's serve ClusterRole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from meshward.app.auth import AuthConfig
from meshward.app.install import API_ROLES, PERMISSIONS
from meshward.app.serve import Server
from meshward.core.observation import Identity, Observation, observation_to_dict
from meshward.kube.config import load_client
from meshward.kube.review import Access, Reviewer
from meshward.runtime.client import ApiClient, ApiError
from tests.support.apiserver import KubeCluster
from tests.support.kubeauth import grant, sa_token, serve_kubeconfig, service_account
from tests.support.serve import running_server

pytestmark = pytest.mark.integration
AUD = ["meshward"]
OBS = observation_to_dict(
    Observation(
        seen_by="node-tap",
        destination=Identity("shop", "api"),
        source=Identity("shop", "web"),
        method="GET",
        path="/items",
    )
)


@pytest.fixture
def cluster_serve(kube_cluster: KubeCluster, kube_namespace: str) -> Iterator[dict[str, Any]]:
    """ServiceAccounts: ops (meshward-viewer), tap (the node tap's meshward.io rules), nobody
    (no grants), admin (update modes); and serve's kubeconfig with the install's rules."""
    ns = kube_namespace
    kubeconfig = serve_kubeconfig(kube_cluster, ns, PERMISSIONS["serve"])
    for sa in ("ops", "tap", "nobody", "admin"):
        service_account(kube_cluster, ns, sa)
    grant(kube_cluster, API_ROLES["meshward-viewer"], ns, "ops")
    tap_rules = [r for r in PERMISSIONS["node-tap"] if r["apiGroups"] == ["meshward.io"]]
    grant(kube_cluster, tap_rules, ns, "tap")
    grant(kube_cluster, [_rule(["modes"], ["update"])], ns, "admin", scope=ns)
    yield {"ns": ns, "kubeconfig": kubeconfig}


def _rule(resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": ["meshward.io"], "resources": resources, "verbs": verbs}


def _status(srv: Server, token: str | None, method: str, path: str, doc: Any = None) -> int:
    """The HTTP status of one call (202 for an accepted ingest, as the API answers)."""
    api = ApiClient(f"http://127.0.0.1:{srv.ports['http']}", token)
    try:
        api.request(method, path, doc)
    except ApiError as exc:
        assert exc.status is not None, exc
        return exc.status
    return 202 if method == "POST" else 200


def test_tokens_and_rbac_decide_each_route(
    kube_cluster: KubeCluster, cluster_serve: dict[str, Any]
) -> None:
    ns, kubeconfig = cluster_serve["ns"], cluster_serve["kubeconfig"]
    tok = {sa: sa_token(kube_cluster, ns, sa, AUD) for sa in ("ops", "tap", "nobody", "admin")}
    for_apiserver = sa_token(kube_cluster, ns, "ops")  # right account, wrong audience

    async def main() -> None:
        auth = AuthConfig(kubernetes=True, kubeconfig=kubeconfig)
        async with running_server(auth=auth, modes_from_labels=True) as srv:
            callers = {
                **{sa: tok[sa] for sa in ("ops", "tap", "nobody")},
                "none": None,
                "wrong-aud": for_apiserver,  # a token for the API server is not ours
                "static-admin": kube_cluster.admin_token,  # no meshward audience either
            }
            calls = {
                "alerts": ("GET", "/api/v1/alerts", None),
                "metrics": ("GET", "/metrics", None),
                "ingest": ("POST", "/api/v1/observations", [OBS]),
                "modes": ("GET", "/api/v1/modes", None),
            }

            def table() -> dict[tuple[str, str], int]:
                return {
                    (who, what): _status(srv, token, *call)
                    for who, token in callers.items()
                    for what, call in calls.items()
                }

            def status(who: str, method: str, path: str, doc: Any = None) -> int:
                return _status(srv, tok[who], method, path, doc)

            got = await asyncio.to_thread(table)
            want = {
                ("ops", "alerts"): 200,
                ("ops", "metrics"): 200,
                ("ops", "ingest"): 403,
                ("ops", "modes"): 200,
                ("tap", "alerts"): 403,
                ("tap", "metrics"): 403,
                ("tap", "ingest"): 403,  # may create observations, but its token names no pod
                ("tap", "modes"): 200,
            }
            for what in calls:
                want[("nobody", what)] = 403
                for who in ("none", "wrong-aud", "static-admin"):
                    want[(who, what)] = 401
            assert got == want
            assert srv.engine.allowlist.export_doc()["services"] == []  # nothing ingested

            # a mode is a Namespace label in a cluster: refused even for who may update modes
            status_put = await asyncio.to_thread(
                status, "admin", "PUT", f"/api/v1/modes/{ns}", {"mode": "learn"}
            )
            assert status_put == 409
            elsewhere = await asyncio.to_thread(
                status, "admin", "PUT", "/api/v1/modes/other", {"mode": "learn"}
            )
            assert elsewhere == 403  # its RoleBinding is in its own namespace only
            assert srv.engine.modes() == {}

            # verdicts are cached: the same calls again ask the API server nothing
            checks = srv.guard.authenticator
            before = checks.reviews  # type: ignore[attr-defined]
            assert await asyncio.to_thread(status, "ops", "GET", "/api/v1/alerts") == 200
            assert await asyncio.to_thread(status, "nobody", "GET", "/api/v1/alerts") == 403
            assert checks.reviews == before  # type: ignore[attr-defined]

    asyncio.run(main())


def test_serve_cannot_patch_namespaces(
    kube_cluster: KubeCluster, cluster_serve: dict[str, Any]
) -> None:
    """serve's own ServiceAccount, with the install's ClusterRole, can create the reviews but
    cannot relabel a namespace: it cannot switch enforcement off."""
    ns = cluster_serve["ns"]
    with load_client(cluster_serve["kubeconfig"]) as api:
        reviewer = Reviewer(api)
        me = reviewer.review_token(sa_token(kube_cluster, ns, "meshward-serve"))
        assert me is not None and me.service_account == (ns, "meshward-serve")
        assert not reviewer.allowed(me, Access("patch", resource="namespaces", namespace=""))
        assert not reviewer.allowed(me, Access("update", resource="namespaces"))
        assert reviewer.allowed(me, Access("list", resource="pods"))


def test_api_server_away_is_503_never_a_pass(
    kube_cluster: KubeCluster, cluster_serve: dict[str, Any], tmp_path: Path
) -> None:
    ns = cluster_serve["ns"]
    token = sa_token(kube_cluster, ns, "ops", AUD)
    dead = kube_cluster.kubeconfig_dict("x")
    dead["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"  # discard: refused
    path = tmp_path / "dead.kubeconfig"
    path.write_text(yaml.safe_dump(dead))

    async def main() -> None:
        auth = AuthConfig(kubernetes=True, kubeconfig=str(path))
        async with running_server(auth=auth) as srv:
            got = await asyncio.to_thread(
                _status, srv, token, "POST", "/api/v1/observations", [OBS]
            )
            assert got == 503
            assert await asyncio.to_thread(_status, srv, token, "GET", "/api/v1/alerts") == 503
            assert await asyncio.to_thread(_status, srv, None, "GET", "/healthz") == 200
            assert srv.engine.allowlist.export_doc()["services"] == []

    asyncio.run(main())


def test_deleted_service_account_is_refused_after_the_cache(
    kube_cluster: KubeCluster, cluster_serve: dict[str, Any]
) -> None:
    ns, kubeconfig = cluster_serve["ns"], cluster_serve["kubeconfig"]
    token = sa_token(kube_cluster, ns, "ops", AUD)

    async def main() -> None:
        auth = AuthConfig(kubernetes=True, kubeconfig=kubeconfig, cache_seconds=0.5)
        async with running_server(auth=auth) as srv:
            assert await asyncio.to_thread(_status, srv, token, "GET", "/api/v1/alerts") == 200
            with kube_cluster.api_client() as api:
                client.CoreV1Api(api).delete_namespaced_service_account("ops", ns)
            # the API server caches a token's success for 10 s, serve for cache_seconds
            deadline = time.monotonic() + 20
            while await asyncio.to_thread(_status, srv, token, "GET", "/api/v1/alerts") != 401:
                assert time.monotonic() < deadline, "a deleted account's token still works"
                await asyncio.sleep(0.5)

    asyncio.run(main())
