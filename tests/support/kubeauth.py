"""ServiceAccounts, TokenRequests and RBAC grants on the test API server, for the tests of serve's
Kubernetes authentication (TokenReview, SubjectAccessReview, node scoping)."""

from __future__ import annotations

import uuid
from typing import Any

from kubernetes import client

from tests.support.apiserver import KubeCluster


def service_account(cluster: KubeCluster, namespace: str, name: str) -> None:
    with cluster.api_client() as api:
        client.CoreV1Api(api).create_namespaced_service_account(
            namespace, {"metadata": {"name": name}}
        )


def sa_token(
    cluster: KubeCluster,
    namespace: str,
    name: str,
    audiences: list[str] | None = None,
    pod: tuple[str, str] | None = None,
    seconds: int = 3600,
) -> str:
    """A TokenRequest for the ServiceAccount: for `audiences` (default: the API server's), bound
    to `pod` (name, uid) when given, as the kubelet's projected tokens are."""
    spec = client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=seconds)
    if pod is not None:
        spec.bound_object_ref = client.V1BoundObjectReference(
            api_version="v1", kind="Pod", name=pod[0], uid=pod[1]
        )
    with cluster.api_client() as api:
        answer = client.CoreV1Api(api).create_namespaced_service_account_token(
            name, namespace, client.AuthenticationV1TokenRequest(spec=spec)
        )
    return str(answer.status.token)


def grant(
    cluster: KubeCluster, rules: list[dict[str, Any]], namespace: str, sa: str, scope: str = ""
) -> str:
    """A ClusterRole with `rules` bound to the ServiceAccount (cluster wide, or in the namespace
    `scope` through a RoleBinding). Returns the role's name."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    subject = [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    with cluster.api_client() as api:
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
        if scope:
            rbac.create_namespaced_role_binding(
                scope, {"metadata": {"name": name}, "roleRef": ref, "subjects": subject}
            )
        else:
            rbac.create_cluster_role_binding(
                {"metadata": {"name": name}, "roleRef": ref, "subjects": subject}
            )
    return name


def serve_kubeconfig(cluster: KubeCluster, namespace: str, rules: list[dict[str, Any]]) -> str:
    """A kubeconfig for a `meshward-serve` ServiceAccount holding exactly `rules` (the install's
    serve ClusterRole), as serve's pod would have."""
    service_account(cluster, namespace, "meshward-serve")
    grant(cluster, rules, namespace, "meshward-serve")
    return str(cluster.write_kubeconfig(sa_token(cluster, namespace, "meshward-serve")))


def pod(
    cluster: KubeCluster,
    namespace: str,
    name: str,
    node: str,
    *,
    app: str = "",
    ip: str = "",
    sa: str = "",
) -> str:
    """A Pod scheduled on `node` (no kubelet here: the test plays it, setting Running and the IP
    through the status subresource). Returns its uid."""
    body: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"app": app or name}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "example/c:1"}]},
    }
    if sa:
        body["spec"]["serviceAccountName"] = sa
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        made = core.create_namespaced_pod(namespace, body)
        if ip:
            status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.9.0.1"}
            core.patch_namespaced_pod_status(name, namespace, {"status": status})
    return str(made.metadata.uid)
