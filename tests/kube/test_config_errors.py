"""Client configuration and one-line errors, against the real API server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kubernetes import client

from meshward.kube import (
    KubeConfigError,
    KubeForbidden,
    KubeUnauthorized,
    KubeUnavailable,
    in_cluster_namespace,
    load_client,
    token_client,
    translate_errors,
)
from tests.support.apiserver import KubeCluster

pytestmark = pytest.mark.integration


def _namespaces(api: client.ApiClient) -> set[str]:
    return {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}


def test_kubeconfig_file(kube_cluster: KubeCluster) -> None:
    with load_client(kube_cluster.kubeconfig) as api:
        assert {"default", "kube-system"} <= _namespaces(api)


def test_kubeconfig_errors_are_one_line(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match=r"no such file"):
        load_client(tmp_path / "missing")
    with pytest.raises(KubeConfigError, match=r"nope") as exc:
        load_client(kube_cluster.kubeconfig, context="nope")
    assert "\n" not in str(exc.value)
    bad = tmp_path / "bad"
    bad.write_text("just a string\n")
    with pytest.raises(KubeConfigError) as exc:
        load_client(bad)
    assert str(exc.value).startswith(f"kubeconfig {bad}:") and "\n" not in str(exc.value)


def test_no_configuration_says_what_to_pass() -> None:
    with pytest.raises(KubeConfigError, match=r"--kubeconfig PATH.*KUBERNETES_SERVICE_HOST"):
        load_client(environ={})


def _sa_dir(tmp_path: Path, cluster: KubeCluster, token: str) -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text(token)  # the kubelet writes no trailing newline either
    shutil.copy(cluster.ca_file, d / "ca.crt")
    (d / "namespace").write_text("meshward-system")
    return d


def test_in_cluster_with_rotating_token(kube_cluster: KubeCluster, tmp_path: Path) -> None:
    """The in-cluster loader re-reads the token file (every refresh period; 0 s here)."""
    sa = _sa_dir(tmp_path, kube_cluster, kube_cluster.users["alice"])
    env = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(kube_cluster.port),
    }
    assert in_cluster_namespace(sa) == "meshward-system"
    with load_client(service_account_dir=sa, environ=env, token_refresh_seconds=0) as api:
        forbidden = pytest.raises(KubeForbidden, match=r'user "alice" cannot list namespaces')
        with forbidden, translate_errors():
            _namespaces(api)
        (sa / "token").write_text(kube_cluster.admin_token)  # the kubelet rotated it
        assert "default" in _namespaces(api)


def test_in_cluster_without_token(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "1"}
    with pytest.raises(KubeConfigError, match=r"no service-account token"):
        load_client(service_account_dir=tmp_path, environ=env)


def test_forbidden_names_verb_and_resource(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    with kube_cluster.user_client("alice") as api:
        with pytest.raises(KubeForbidden) as exc, translate_errors():
            client.CoreV1Api(api).list_namespaced_config_map(kube_namespace)
        assert str(exc.value) == (
            f'RBAC forbidden: user "alice" cannot list configmaps in namespace "{kube_namespace}"'
        )
        assert (exc.value.verb, exc.value.resource) == ("list", "configmaps")

        with pytest.raises(KubeForbidden) as exc, translate_errors():
            client.CoreV1Api(api).list_node()
        assert str(exc.value) == 'RBAC forbidden: user "alice" cannot list nodes (cluster-wide)'

        with pytest.raises(KubeForbidden) as exc, translate_errors():
            client.CoordinationV1Api(api).create_namespaced_lease(
                kube_namespace, {"metadata": {"name": "x"}, "spec": {}}
            )
        assert str(exc.value) == (
            'RBAC forbidden: user "alice" cannot create leases.coordination.k8s.io '
            f'in namespace "{kube_namespace}"'
        )


def test_granted_role_lifts_the_error(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client())
    rbac.create_namespaced_role(
        kube_namespace,
        {
            "metadata": {"name": "cm-read"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        kube_namespace,
        {
            "metadata": {"name": "cm-read"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-read"},
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Group",
                    "name": "meshward:viewers",
                }
            ],
        },
    )
    with kube_cluster.user_client("viewer") as api:
        items = client.CoreV1Api(api).list_namespaced_config_map(kube_namespace).items
        assert [i.metadata.name for i in items] == ["kube-root-ca.crt"] or items == []


def test_unauthorized_and_unreachable(kube_cluster: KubeCluster) -> None:
    bad = token_client(kube_cluster.url, "not-a-token", ca_file=kube_cluster.ca_file)
    with (
        bad,
        pytest.raises(KubeUnauthorized, match=r"rejected the credentials"),
        translate_errors(server=kube_cluster.url),
    ):
        client.CoreV1Api(bad).list_namespace()
    down = token_client("https://127.0.0.1:1", "t", insecure=True)
    with (
        down,
        pytest.raises(KubeUnavailable, match=r"cannot reach the Kubernetes API server"),
        translate_errors(),
    ):
        client.CoreV1Api(down).list_namespace(_request_timeout=2)
