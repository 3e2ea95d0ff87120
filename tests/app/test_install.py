"""meshward install: the manifests' shape and their least-privilege promises (the real API
server accepts them in tests/kube/test_install_apply.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from meshward.app.install import (
    API_ROLES,
    AUDIT_PORT,
    PERMISSIONS,
    InstallOptions,
    audit_policy,
    parse_kube_version,
    render,
)
from meshward.app.meshguard import KINDS as GUARDED
from tests.support.cli import Result


def _containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec")
        if spec:
            out += [(obj["metadata"]["name"], c) for c in spec["containers"]]
    return out


def test_every_object_is_labelled_and_namespaced_where_it_should() -> None:
    objects = render(InstallOptions())
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace" and kinds[1] == "CustomResourceDefinition"
    assert {
        "Deployment",
        "DaemonSet",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    } <= set(kinds)
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshward"
        assert ("namespace" in obj["metadata"]) == (obj["kind"] not in cluster_scoped), obj["kind"]


def test_containers_are_locked_down() -> None:
    for name, c in _containers(render(InstallOptions())):
        ctx = c["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["capabilities"]["drop"] == ["ALL"], name
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if name == "meshward-node-tap":
            assert ctx["runAsUser"] == 0
            assert sorted(ctx["capabilities"]["add"]) == ["NET_RAW", "SYS_ADMIN"]
        else:
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001, name
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert "add" not in ctx["capabilities"], name


def test_rbac_is_least_privilege() -> None:
    for component, rules in PERMISSIONS.items():
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], component
            assert "*" not in rule["apiGroups"], component
    serve = PERMISSIONS["serve"]
    # who may switch enforcement off is RBAC on namespaces: serve only reads them
    ns_rules = [r for r in serve if "namespaces" in r["resources"]]
    assert ns_rules and all(set(r["verbs"]) <= {"get", "list", "watch"} for r in ns_rules)
    assert not any("envoyfilters" in r["resources"] for r in serve)  # rerouting power: not here
    # the node tap reads the Kubernetes API; on serve's API it may only send observations
    # and read modes (meshward.io virtual resources, checked by serve's SubjectAccessReview)
    for r in PERMISSIONS["node-tap"]:
        if r["apiGroups"] == ["meshward.io"]:
            assert (r["resources"], r["verbs"]) in (
                (["observations"], ["create"]),
                (["modes"], ["get", "list"]),
            )
        else:
            assert set(r["verbs"]) <= {"get", "list", "watch"}


def test_api_roles_grant_no_namespace_or_core_rights() -> None:
    """The roles for API callers stay inside meshward.io: none lets its holder relabel a
    namespace (the mode), and only the operator edits rules (Allowlist objects)."""
    objects = {o["metadata"]["name"]: o for o in render(InstallOptions())}
    for name, rules in API_ROLES.items():
        assert objects[name]["kind"] == "ClusterRole" and objects[name]["rules"] == rules
        for rule in rules:
            assert rule["apiGroups"] == ["meshward.io"], name
        writes = {
            res
            for r in rules
            for res in r["resources"]
            if set(r["verbs"]) - {"get", "list", "watch"}
        } - {"sessions", "readiness"}  # a login code for oneself; a HAR's report changes nothing
        assert writes == ({"allowlists"} if name == "meshward-operator" else set()), name
    assert not any(
        o["kind"].endswith("Binding") and o["metadata"]["name"] in API_ROLES
        for o in objects.values()
    )


@pytest.mark.parametrize(
    ("version", "api"),
    [("1.20", "policy/v1beta1"), ("1.21", "policy/v1"), ("v1.31.2", "policy/v1")],
)
def test_pdb_follows_the_kube_version(version: str, api: str) -> None:
    objects = render(InstallOptions(kube_version=parse_kube_version(version)))
    (pdb,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert pdb["apiVersion"] == api


def test_serve_spreads_and_probes() -> None:
    objects = render(InstallOptions(replicas=3))
    serve = next(
        o
        for o in objects
        if o["metadata"]["name"] == "meshward-serve" and o["kind"] == "Deployment"
    )
    assert serve["spec"]["replicas"] == 3
    pod = serve["spec"]["template"]["spec"]
    assert pod["affinity"]["podAntiAffinity"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_serve_authenticates_the_node_taps_projected_tokens() -> None:
    """serve runs --auth kubernetes with its default audience, the audience of the token the
    node-tap DaemonSet mounts and sends."""
    objects = render(InstallOptions())
    serve, tap = (
        next(o for o in objects if o["metadata"]["name"] == name and o["kind"] == kind)
        for name, kind in (("meshward-serve", "Deployment"), ("meshward-node-tap", "DaemonSet"))
    )
    (c,) = serve["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--auth") + 1] == "kubernetes"
    assert "--token-audience" not in c["args"]  # the default: meshward
    sources = [
        src["serviceAccountToken"]
        for v in tap["spec"]["template"]["spec"]["volumes"]
        for src in v.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in src
    ]
    assert [s["audience"] for s in sources] == ["meshward"]
    (t,) = tap["spec"]["template"]["spec"]["containers"]
    assert "--api-token-file" in t["args"]


def test_serve_runs_the_cluster_store_with_its_pod_name_and_the_dsn_secret() -> None:
    def serve_container(opts: InstallOptions) -> dict[str, Any]:
        (dep,) = [
            o
            for o in render(opts)
            if o["kind"] == "Deployment" and o["metadata"]["name"] == "meshward-serve"
        ]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        return c

    c = serve_container(InstallOptions())
    assert c["args"][:5] == ["serve", "--store", "kubernetes", "--auth", "kubernetes"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "MESHWARD_ALERTS_DSN" not in env
    c = serve_container(InstallOptions(alerts_dsn_secret="pg"))
    (dsn,) = [e for e in c["env"] if e["name"] == "MESHWARD_ALERTS_DSN"]
    assert dsn["valueFrom"] == {"secretKeyRef": {"name": "pg", "key": "dsn"}}
    assert not any("dsn" in a.lower() for a in c["args"])  # never an argument ps shows


def test_command_prints_a_yaml_stream_and_uninstall_reverses_it(meshward: Any) -> None:
    r: Result = meshward("install", "--namespace", "mw", "--image", "reg/meshward:1")
    assert r.code == 0, r.err
    docs = [d for d in yaml.safe_load_all(r.out) if d]
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "mw", "labels": docs[0]["metadata"]["labels"]},
    }
    images = {c["image"] for _, c in _containers(docs)}
    assert images == {"reg/meshward:1"}
    r = meshward("uninstall", "--namespace", "mw", "--format", "json")
    assert r.code == 0
    items = json.loads(r.out)["items"]
    assert items[-1]["kind"] == "Namespace" and [i["kind"] for i in items] == [
        d["kind"] for d in reversed(docs)
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--namespace", "Bad_NS"],
        ["--replicas", "0"],
        ["--kube-version", "one.two"],
        ["--image", ""],
        ["--istio-style", "extension-provider"],
        ["--alerts-dsn-secret", "Not A Name"],
        ["--audit-webhook-secret", "Not A Name"],
    ],
)
def test_bad_flags_are_one_line_errors(meshward: Any, argv: list[str]) -> None:
    r = meshward("install", *argv)
    assert r.code == 2 and r.out == ""
    assert r.err.strip().count("\n") == 0 or "usage" in r.err


def test_extension_provider_fragment_goes_to_a_file(meshward: Any, tmp_path: Any) -> None:
    path = tmp_path / "mesh.yaml"
    r = meshward("install", "--istio-style", "extension-provider", "--mesh-config", str(path))
    assert r.code == 0, r.err
    fragment = yaml.safe_load(path.read_text())
    (provider,) = fragment["meshConfig"]["extensionProviders"]
    assert provider["envoyExtAuthzGrpc"]["service"] == "meshward.meshward.svc.cluster.local"
    assert "istioctl" in r.err


def _node_tap(opts: InstallOptions) -> tuple[dict, dict]:
    (ds,) = [o for o in render(opts) if o["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def test_node_tap_privileges_follow_what_it_watches() -> None:
    """By default no hostPID and no SYS_PTRACE (pod namespaces come from /var/run/netns);
    watching a node interface or scanning /proc adds exactly those two."""
    spec, c = _node_tap(InstallOptions())
    assert "hostPID" not in spec and "hostNetwork" not in spec
    assert sorted(c["securityContext"]["capabilities"]["add"]) == ["NET_RAW", "SYS_ADMIN"]
    assert "--iface" not in c["args"] and "--baseline-file" in c["args"]
    # serve's ingest wants a token bound to the pod, minted for the audience meshward
    args = c["args"]
    assert args[args.index("--api-token-file") + 1] == "/var/run/secrets/meshward/token"
    (token,) = [v for v in spec["volumes"] if v["name"] == "api-token"]
    sat = token["projected"]["sources"][0]["serviceAccountToken"]
    assert (sat["audience"], sat["path"]) == ("meshward", "token")
    paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert paths == {"netns": "/var/run/netns", "state": "/var/lib/meshward/node-tap"}
    assert next(m for m in c["volumeMounts"] if m["name"] == "netns")["readOnly"] is True
    for opts in (InstallOptions(node_ifaces=("cni0",)), InstallOptions(node_proc_scan=True)):
        spec, c = _node_tap(opts)
        assert spec["hostPID"] is True and "hostNetwork" not in spec
        add = c["securityContext"]["capabilities"]["add"]
        assert sorted(add) == ["NET_RAW", "SYS_ADMIN", "SYS_PTRACE"]
    _, c = _node_tap(InstallOptions(node_ifaces=("cni0",)))
    args = c["args"]
    assert args[args.index("--iface") + 1] == "cni0"
    assert args[args.index("--host-netns") + 1] == "/proc/1/ns/net"


def test_controller_serves_metrics_behind_a_probe_and_a_policy() -> None:
    """The controller's 9194: named port, liveness probe on /healthz, the flag passed, reachable
    only from operator namespaces, and the reviews its /metrics guard needs."""
    objects = render(InstallOptions())
    (ctl,) = [
        o
        for o in objects
        if o["metadata"]["name"] == "meshward-controller" and o["kind"] == "Deployment"
    ]
    (c,) = ctl["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--metrics-port") + 1] == "9194"
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9194, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9194}
    (policy,) = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "meshward-controller"
    ]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9194, "protocol": "TCP"}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"meshward.io/operator": "true"}}}
    ]
    groups = {g for r in PERMISSIONS["controller"] for g in r["apiGroups"]}
    assert {"authentication.k8s.io", "authorization.k8s.io"} <= groups


def test_the_mesh_guard_reads_only_and_reports_to_serve() -> None:
    """The controller's mesh guard: read-only on the mesh's policy objects and pods, `create
    findings` on serve's API (nobody else's role has it), a pod-bound token for it, and a way
    through serve's NetworkPolicy."""
    objects = render(InstallOptions())
    rules = PERMISSIONS["controller"]
    writes = {"create", "update", "patch", "delete"}
    written = {
        (g, res)
        for r in rules
        if writes & set(r["verbs"])
        for g in r["apiGroups"]
        for res in r["resources"]
    }
    assert written == {
        ("networking.istio.io", "envoyfilters"),
        # the tap's stream window (istio/envoyfilter.py); no power EnvoyFilters do not give
        ("networking.istio.io", "destinationrules"),
        ("", "events"),
        ("authentication.k8s.io", "tokenreviews"),
        ("authorization.k8s.io", "subjectaccessreviews"),
        ("meshward.io", "findings"),
    }
    read = {
        (g, res)
        for r in rules
        if "watch" in r["verbs"]
        for g in r["apiGroups"]
        for res in r["resources"]
    }
    assert {
        ("", "pods"),
        ("security.istio.io", "peerauthentications"),
        ("networking.istio.io", "destinationrules"),
        ("policy.linkerd.io", "meshtlsauthentications"),
    } <= read
    others = [r for name, roles in API_ROLES.items() for r in roles] + [
        r for name, roles in PERMISSIONS.items() if name != "controller" for r in roles
    ]
    assert not any("findings" in r["resources"] for r in others)
    (deploy,) = [
        o
        for o in objects
        if o["metadata"]["name"] == "meshward-controller" and o["kind"] == "Deployment"
    ]
    spec = deploy["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert args[args.index("--server") + 1] == "http://meshward.meshward.svc.cluster.local:9193"
    assert args[args.index("--api-token-file") + 1] == "/var/run/secrets/meshward/token"
    (vol,) = [v for v in spec["volumes"] if v["name"] == "api-token"]
    assert vol["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "meshward"
    (policy,) = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "meshward-serve"
    ]
    sources = [f for rule in policy["spec"]["ingress"] for f in rule["from"]]
    assert {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "meshward-controller"}}
    } in sources


def test_the_audit_webhook_is_wired_only_when_asked() -> None:
    plain = render(InstallOptions())
    assert not [o for o in plain if o["metadata"]["name"] == "meshward-controller-audit"]
    objects = render(InstallOptions(audit_webhook_secret="mw-audit"))
    (deploy,) = [
        o
        for o in objects
        if o["metadata"]["name"] == "meshward-controller" and o["kind"] == "Deployment"
    ]
    spec = deploy["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert args[args.index("--audit-webhook-port") + 1] == str(AUDIT_PORT)
    assert "--audit-webhook-token-file" in args  # never an open port
    assert spec["securityContext"]["fsGroup"] == 10001  # reads the Secret's 0440 files
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "mw-audit", "defaultMode": 0o440}
    (svc,) = [o for o in objects if o["metadata"]["name"] == "meshward-controller-audit"]
    assert svc["spec"]["ports"][0]["targetPort"] == AUDIT_PORT
    (policy,) = [
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "meshward-controller"
    ]
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert AUDIT_PORT in ports


def test_the_audit_policy_logs_only_the_writes_the_guard_reads(
    meshward: Any, tmp_path: Any
) -> None:
    policy = audit_policy()
    assert policy["apiVersion"] == "audit.k8s.io/v1" and policy["omitStages"] == ["RequestReceived"]
    full, meta, rest = policy["rules"]
    logged = {(r["group"], name) for r in full["resources"] for name in r["resources"]}
    assert logged == {(k.group, k.plural) for k in GUARDED} | {("", "namespaces")}
    assert meta["level"] == "Metadata" and meta["resources"] == [
        {"group": "", "resources": ["pods"]}
    ]
    for rule in (full, meta):  # writes only: no get, list, watch
        assert set(rule["verbs"]) == {"create", "update", "patch", "delete", "deletecollection"}
    assert rest == {"level": "None"}
    path = tmp_path / "policy.yaml"
    r = meshward("install", "--audit-policy", str(path))
    assert r.code == 0, r.err
    assert yaml.safe_load(path.read_text()) == policy
