"""meshward install on a real kube-apiserver (v1.20): accepted by a server-side dry run, then
applied; the Allowlist CRD validates; uninstall removes everything."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from meshward.app.install import InstallOptions, render
from tests.support.apiserver import KubeCluster

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _meshward(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "meshward", *argv],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def _stream(objects: list[dict]) -> str:
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)


def test_install_for_1_20_is_accepted_and_applied(kube_cluster: KubeCluster) -> None:
    manifests = _meshward("install", "--namespace", "mw-install", "--kube-version", "1.20")
    # a dry run persists nothing, so namespaced objects need their namespace to exist first
    kube_cluster.kubectl("create", "namespace", "mw-install")
    dry = kube_cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",  # the CRD may have been applied by another module's fixture
        "--dry-run=server",
        "--field-manager=meshward-install",
        "-f",
        "-",
        input=manifests,
    )
    assert "serverside-applied (server dry run)" in dry.stdout
    assert kube_cluster.kubectl("get", "deployment", "-n", "mw-install", "-o", "name").stdout == ""
    kube_cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=meshward-install",
        "-f",
        "-",
        input=manifests,
    )
    for kind, name in (
        ("deployment", "meshward-serve"),
        ("deployment", "meshward-controller"),
        ("daemonset", "meshward-node-tap"),
        ("service", "meshward"),
        ("poddisruptionbudget", "meshward-serve"),
        ("networkpolicy", "meshward-serve"),
        ("serviceaccount", "meshward-serve"),
        ("role", "meshward-controller-lease"),
    ):
        got = json.loads(
            kube_cluster.kubectl("get", kind, name, "-n", "mw-install", "-o", "json").stdout
        )
        assert got["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshward"
    served = json.loads(
        kube_cluster.kubectl(
            "get", "deployment", "meshward-serve", "-n", "mw-install", "-o", "json"
        ).stdout
    )
    ctx = served["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert ctx["readOnlyRootFilesystem"] and ctx["runAsNonRoot"]  # kept by the server
    # serve runs with cluster authentication, and its account may do exactly what that needs:
    # review tokens and access, watch pods (node scope, the workload rule); never patch the
    # namespaces whose label is the mode
    args = served["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--auth") + 1] == "kubernetes"
    as_serve = "--as=system:serviceaccount:mw-install:meshward-serve"
    for verb, what, allowed in (
        ("create", "tokenreviews.authentication.k8s.io", True),
        ("create", "subjectaccessreviews.authorization.k8s.io", True),
        ("watch", "pods", True),
        ("list", "pods", True),
        ("patch", "namespaces", False),
        ("create", "tokenrequests", False),
    ):
        said = kube_cluster.kubectl("auth", "can-i", verb, what, as_serve, check=False)
        assert said.stdout.strip() == ("yes" if allowed else "no"), (verb, what, said.stdout)

    # the CRD is established and validates what a replica or a person writes
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        crd = json.loads(
            kube_cluster.kubectl("get", "crd", "allowlists.meshward.io", "-o", "json").stdout
        )
        if any(
            c["type"] == "Established" and c["status"] == "True"
            for c in crd.get("status", {}).get("conditions", [])
        ):
            break
        time.sleep(0.2)
    good = {
        "apiVersion": "meshward.io/v1alpha1",
        "kind": "Allowlist",
        "metadata": {"name": "api", "namespace": "mw-install"},
        "spec": {
            "destination": "mw-install/api",
            "rules": [{"method": "GET", "path": "/items/{int}", "callers": ["a/b"]}],
        },
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(good))
    bad = json.loads(json.dumps(good))
    bad["metadata"]["name"] = "bad"
    del bad["spec"]["destination"]
    refused = kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "destination" in refused.stderr

    removed = kube_cluster.kubectl(
        "delete",
        "--wait=false",
        "-f",
        "-",
        input=_meshward("uninstall", "--namespace", "mw-install", "--kube-version", "1.20"),
    )
    assert "deleted" in removed.stdout
    assert kube_cluster.kubectl("get", "clusterrole", "meshward-serve", check=False).returncode != 0


def test_current_rendering_needs_a_current_server(kube_cluster: KubeCluster) -> None:
    """The default rendering targets current Kubernetes: PodDisruptionBudget policy/v1, which
    1.20 does not serve; everything else is the same and accepted there."""
    objects = render(InstallOptions(namespace="mw-current"))
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert [p["apiVersion"] for p in pdbs] == ["policy/v1"]
    refused = kube_cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=_stream(pdbs), check=False
    )
    assert refused.returncode != 0 and "policy/v1" in refused.stderr
    kube_cluster.kubectl("create", "namespace", "mw-current")
    rest = [o for o in objects if o["kind"] != "PodDisruptionBudget"]
    kube_cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=_stream(rest)
    )
