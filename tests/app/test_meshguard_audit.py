"""The configuration guard names the user who made a change, from the API server's audit log: a
real kube-apiserver (v1.20) started with meshward's own audit policy (`meshward install
--audit-policy`) and its audit webhook backend pointed at the controller's audit port (HTTPS,
bearer token), batched as in a cluster. A PeerAuthentication set PERMISSIVE by a token user
names that user (joined by resourceVersion); a DENY AuthorizationPolicy deleted by an admin
impersonating another user names both (a deletion has no field manager at all); meshward's own
applies stay quiet. This API server is the module's own (the session's has no audit log).
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client

from meshward.app.install import audit_policy
from meshward.app.kubeauditport import PATH, AuditPort
from meshward.core.kubeaudit import Authors
from meshward.core.threats.names import (
    MESH_FILTER_TAMPERED,
    MESH_INJECTION_DISABLED,
    MESH_MTLS_WEAKENED,
    MESH_POLICY_WIDENED,
    MESH_UNMESHED_POD,
)
from meshward.istio.certs import MeshCA
from meshward.kube.watch import wait_for
from tests.support.apiserver import _free_port, apply_mesh_crds, running_cluster
from tests.support.meshguard import Guarded, guarded_env, latency_summary

pytestmark = pytest.mark.integration


@dataclass
class Audited:
    g: Guarded
    port: AuditPort


def webhook_kubeconfig(url: str, ca: str, token: str) -> str:
    """What an operator writes for `--audit-webhook-config-file` (docs/mesh-guard.md)."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "meshward", "cluster": {"server": url, "certificate-authority": ca}}
            ],
            "users": [{"name": "kube-apiserver", "user": {"token": token}}],
            "contexts": [
                {"name": "audit", "context": {"cluster": "meshward", "user": "kube-apiserver"}}
            ],
            "current-context": "audit",
        }
    )


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    work = tmp_path_factory.mktemp("audit")
    tls = MeshCA(work / "ca").issue(
        "meshward", "meshward-controller", out=work, dns=["localhost"], ips=["127.0.0.1"]
    )
    token_file = work / "token"
    token_file.write_text(secrets.token_urlsafe(32) + "\n")
    token_file.chmod(0o600)
    port = _free_port()
    hook = webhook_kubeconfig(
        f"https://127.0.0.1:{port}{PATH}", tls.ca_cert, token_file.read_text().strip()
    )
    with running_cluster(audit_policy=yaml.safe_dump(audit_policy()), audit_webhook=hook) as kube:
        apply_mesh_crds(kube)
        with guarded_env(kube, authors=Authors(), audit_wait=15.0) as g:
            audit_port = AuditPort(
                g.guard,
                cert=tls.cert_chain,
                key=tls.private_key,
                token_file=str(token_file),
                host="127.0.0.1",
                port=port,
            )
            audit_port.start()
            try:
                yield Audited(g, audit_port)
            finally:
                audit_port.stop()
            if g.latency:
                print(f"\nmesh guard with the audit log: {latency_summary(g.latency)}")


def allow_user(g: Guarded, user: str, group: str, resource: str, verbs: list[str], ns: str) -> None:
    """RBAC for one of the API server's token users in one namespace."""
    rbac = client.RbacAuthorizationV1Api(g.core.api_client)
    name = f"t-{uuid.uuid4().hex[:8]}"
    rule = {"apiGroups": [group], "resources": [resource], "verbs": verbs}
    rbac.create_namespaced_role(ns, {"metadata": {"name": name}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    )


def peer_auth(ns: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": ns},
        "spec": {"mtls": {"mode": mode}},
    }


def test_a_change_names_the_user_who_made_it(audited: Audited) -> None:
    g = audited.g
    ns = g.namespace()
    g.apply("PeerAuthentication", ns, "default", {"mtls": {"mode": "STRICT"}}, "alice-tool")
    g.quiet(ns, "default")
    allow_user(g, "bob", "security.istio.io", "peerauthentications", ["get", "patch"], ns)
    bob = client.CustomObjectsApi(g.kube.user_client("bob"))

    def permissive() -> None:
        bob.patch_namespaced_custom_object(
            "security.istio.io",
            "v1beta1",
            ns,
            "peerauthentications",
            "default",
            peer_auth(ns, "PERMISSIVE"),
            field_manager="bob-tool",
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    event = g.expect(
        "PeerAuthentication PERMISSIVE, by a user",
        ns,
        "default",
        MESH_MTLS_WEAKENED,
        "bob",
        permissive,
        "spec.mtls.mode: STRICT -> PERMISSIVE",
    )
    # the tool from managedFields and the user from the audit log, with where they came from
    assert "changed by bob-tool (Apply" in event.message
    assert "user bob (groups system:authenticated; from 127.0.0.1" in event.message
    assert "patch at" in event.message and "matched by resourceVersion" in event.message
    [alert] = [a for a in g.alerts("default") if a["namespace"] == ns and not a["guard"]["cleared"]]
    assert alert["source"] == "bob" and alert["guard"]["user"] == "bob"
    assert alert["guard"]["by"].startswith("bob-tool")


def test_a_deletion_names_who_deleted(audited: Audited) -> None:
    g = audited.g
    ns = g.namespace(mode="monitor")
    deny = {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}
    g.apply("AuthorizationPolicy", ns, "deny-admin", deny, "alice-tool")
    g.quiet(ns, "deny-admin")
    allow_user(g, "carol", "security.istio.io", "authorizationpolicies", ["delete"], ns)

    def delete_as_carol() -> None:  # the admin, impersonating carol (kubectl --as)
        g.kube.kubectl(
            "delete",
            "authorizationpolicies.security.istio.io",
            "deny-admin",
            "-n",
            ns,
            "--as=carol",
        )

    event = g.expect(
        "DENY AuthorizationPolicy deleted, by an impersonating admin",
        ns,
        "deny-admin",
        MESH_POLICY_WIDENED,
        "admin as carol",
        delete_as_carol,
        "spec.action: DENY -> (deleted)",
    )
    assert "user admin as carol (groups system:masters" in event.message
    assert "agent kubectl/" in event.message and "delete at" in event.message


def test_meshwards_own_objects_name_who_tampered_and_the_log_is_counted(audited: Audited) -> None:
    g = audited.g
    ns = g.namespace(**{"istio-injection": "enabled"})

    def applied() -> bool:
        try:
            g.custom.get_namespaced_custom_object(
                "networking.istio.io", "v1alpha3", ns, "envoyfilters", "meshward"
            )
            return True
        except client.ApiException:
            return False

    assert wait_for(applied, 10)
    g.quiet(ns, "meshward")
    # a user edits meshward's own filter: the tampering and the Restored Event name that user,
    # not the controller whose write puts it back right after
    allow_user(g, "bob", "networking.istio.io", "envoyfilters", ["get", "patch"], ns)

    def edit() -> None:
        client.CustomObjectsApi(g.kube.user_client("bob")).patch_namespaced_custom_object(
            "networking.istio.io",
            "v1alpha3",
            ns,
            "envoyfilters",
            "meshward",
            {"spec": {"configPatches": []}},
            field_manager="bob-edit",
            _content_type="application/merge-patch+json",
        )

    g.expect("own EnvoyFilter edited", ns, "meshward", MESH_FILTER_TAMPERED, "bob", edit)

    def restored_names_bob() -> bool:
        return any(
            e.reason == "Restored" and "user bob (" in e.message for e in g.events(ns, "meshward")
        )

    assert wait_for(restored_names_bob, 10), [e.message for e in g.events(ns, "meshward")]
    # a Namespace's label, by the admin (a namespace is its own namespace in the audit log)
    g.expect(
        "injection switched off",
        ns,
        ns,
        MESH_INJECTION_DISABLED,
        "admin",
        lambda: g.kube.kubectl("label", "namespace", ns, "istio-injection=disabled", "--overwrite"),
        "matched by resourceVersion",
    )
    audit = g.guard.counters.audit
    assert audit["batches"] > 0 and audit["kept"] > 0
    assert not [k for k in audit if k.startswith("refused-")], audit
    assert audit["not-joined"] == 0, audit  # every finding of this module found its user


def test_a_batch_the_waiting_replica_refused_is_sent_again(audited: Audited) -> None:
    """A replica that does not lead answers 503 with Retry-After: the API server's webhook
    client tries the batch again, and the leader's answer joins the finding."""
    g, port = audited.g, audited.port
    ns = g.namespace()
    counts = g.guard.counters.audit
    refused = counts["refused-not-leader"]
    port.leading = threading.Event()  # this port's replica waits for the Lease...
    takeover = threading.Timer(3.0, port.leading.set)  # ...and leads 3 s later
    try:
        takeover.start()
        g.expect(
            "PeerAuthentication DISABLE, its batch refused once",
            ns,
            "default",
            MESH_MTLS_WEAKENED,
            "admin",
            lambda: g.apply(
                "PeerAuthentication", ns, "default", {"mtls": {"mode": "DISABLE"}}, "eve-tool"
            ),
            "user admin (groups system:masters",
        )
    finally:
        takeover.cancel()
        port.leading = None
    assert counts["refused-not-leader"] > refused


def test_a_pod_without_a_sidecar_names_who_created_it(audited: Audited) -> None:
    """A pod is seen when it runs (a status write the policy leaves out): the guard names the
    user of its latest write, its creation here (Metadata level: joined by name)."""
    g = audited.g
    ns = g.namespace(**{"istio-injection": "enabled"})
    allow_user(g, "alice", "", "pods", ["create"], ns)
    pod = {
        "metadata": {"name": "bare"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "example/a:1"}]},
    }
    client.CoreV1Api(g.kube.user_client("alice")).create_namespaced_pod(ns, pod)

    def running() -> None:  # what the kubelet would write
        g.core.patch_namespaced_pod_status("bare", ns, {"status": {"phase": "Running"}})

    g.expect(
        "pod without a sidecar, created by a user",
        ns,
        "bare",
        MESH_UNMESHED_POD,
        "alice",
        running,
        "create at",
    )
