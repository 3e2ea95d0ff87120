"""In a cluster, a verified sidecar's workload hint must name a workload that runs under its
verified service account (serve's pod index, owner-reference naming), on the real API server:
a Deployment's pods, made by the real controller manager, under their ServiceAccount."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from kubernetes import client

from meshward.app.auth import AuthConfig
from meshward.app.install import PERMISSIONS
from meshward.core.peer import meshward_identity
from meshward.runtime.grpcpeer import PeerPolicy
from tests.support.apiserver import KubeCluster
from tests.support.kubeauth import pod, serve_kubeconfig, service_account
from tests.support.metrics import sample
from tests.support.serve import check_request, running_server

pytestmark = pytest.mark.integration


def _deployment(cluster: KubeCluster, namespace: str, name: str, sa: str, app: str) -> None:
    """A Deployment whose pods carry an `app` label unlike its name: the workload is the
    owner's name (ReplicaSet less pod-template-hash), never the label."""
    labels = {"app": app}
    body = {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": sa,
                    "containers": [{"name": "c", "image": "example/c:1"}],
                },
            },
        },
    }
    with cluster.api_client() as api:
        client.AppsV1Api(api).create_namespaced_deployment(namespace, body)


def test_a_hinted_workload_must_run_under_the_verified_account(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    ns = kube_namespace
    kubeconfig = serve_kubeconfig(kube_cluster, ns, PERMISSIONS["serve"])
    for sa in ("web", "db"):
        service_account(kube_cluster, ns, sa)
    _deployment(kube_cluster, ns, "web", sa="web", app="frontend")
    pod(kube_cluster, ns, "db-0", "node-a", app="db", sa="db")
    by = meshward_identity()
    xfcc = (("x-forwarded-client-cert", f"By={by};URI=spiffe://cluster.local/ns/{ns}/sa/web"),)

    async def main() -> None:
        auth = AuthConfig(kubernetes=True, kubeconfig=kubeconfig)
        async with running_server(auth=auth, peers=PeerPolicy(kind="xfcc")) as srv:
            assert srv.pods is not None
            deadline = time.monotonic() + 30
            while not (srv.pods.runs_under(ns, "web", "web") and srv.pods.get(ns, "db-0")):
                assert time.monotonic() < deadline, "the Deployment's pod never reached the index"
                await asyncio.sleep(0.2)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports['authz']}") as ch:
                stub = external_auth_pb2_grpc.AuthorizationStub(ch)

                async def code(workload: str) -> grpc.StatusCode:
                    req = check_request("GET", "/x", namespace=ns, workload=workload)
                    if not workload:
                        del req.attributes.context_extensions["workload"]
                    try:
                        await stub.Check(req, metadata=xfcc, timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        return exc.code()
                    return grpc.StatusCode.OK

                assert await code("web") == grpc.StatusCode.OK  # the Deployment, under web
                assert await code("") == grpc.StatusCode.OK  # no hint: the account itself
                # the pods' app label is not the workload's name; db runs under another account
                assert await code("frontend") == grpc.StatusCode.PERMISSION_DENIED
                assert await code("db") == grpc.StatusCode.PERMISSION_DENIED
            text = srv.metrics.exposition().decode()
            kind = 'kind="peer-workload-not-of-service-account",where="extauthz"'
            assert sample(text, "meshward_errors_total{" + kind + "}") == 2
            assert f"{ns}/frontend" not in str(srv.engine.allowlist.export_doc())

    asyncio.run(main())
