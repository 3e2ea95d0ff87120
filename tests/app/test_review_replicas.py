"""The review's edits with two `meshward serve` replicas on the real Kubernetes API server: a
rule removed through one replica's API is gone from both, stays gone while the other replica
keeps sending what it learned of it, and is denied by both in enforce; an approval made
through one shows in the other."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

from meshward.app.kubestore import object_ref
from meshward.kube.watch import wait_for
from tests.support.apiserver import KubeCluster
from tests.support.envoy_http import ServerThread
from tests.support.replicas import FLUSH, check, served_paths, stored_paths, wait_ready

pytestmark = pytest.mark.integration
DENIED = 7  # google.rpc PERMISSION_DENIED


def stored(kube: KubeCluster, dest: str) -> dict[str, Any]:
    ns, name = object_ref(dest, "meshward")
    out = kube.kubectl("get", "allowlists.meshward.io", name, "-n", ns, "-o", "json")
    spec: dict[str, Any] = json.loads(out.stdout)["spec"]
    return spec


def test_a_removal_through_one_replica_holds_in_both(
    kube_cluster: KubeCluster, kube_namespace: str, replica: Callable[..., ServerThread]
) -> None:
    ns, dest = kube_namespace, f"{kube_namespace}/api"
    review = f"/api/v1/review?destination={quote(dest, safe='')}"
    r1, r2 = replica("r1"), replica("r2")
    wait_ready(r1)
    wait_ready(r2)
    for srv, path in ((r1, "/users/1"), (r2, "/users/2"), (r1, "/items")):
        assert check(srv.ports["authz"], path, ns) == 0  # learn mode: learned
    assert wait_for(
        lambda: all(served_paths(s, dest) == {"/users/{int}", "/items"} for s in (r1, r2)), 15
    )

    t0 = time.monotonic()
    r1.api("POST", review, {"action": "remove", "method": "GET", "path": "/users/{int}"})
    took = time.monotonic() - t0
    assert "/users/{int}" not in served_paths(r1, dest)  # in effect here when it answers
    # r2 goes on sending what it learned of the rule (its engine has not the tombstone yet)
    for i in range(3, 6):
        check(r2.ports["authz"], f"/users/{i}", ns)
    assert wait_for(lambda: "/users/{int}" not in served_paths(r2, dest), 10)
    print(
        f"\nremove: answered in {took * 1000:.0f} ms; gone from the other replica after "
        f"{time.monotonic() - t0:.2f} s (flush {FLUSH} s)"
    )
    spec = stored(kube_cluster, dest)
    assert {"method": "GET", "path": "/users/{int}"} in spec["removed"]
    assert spec["review"]["removed"][0]["by"] == "api-token"
    # several flushes later, neither the merge nor r2's learning has brought it back
    wait_for(lambda: False, 5 * FLUSH)
    assert stored_paths(kube_cluster, dest) == {"/items"}
    assert served_paths(r1, dest) == served_paths(r2, dest) == {"/items"}

    kube_cluster.kubectl("label", "namespace", ns, "meshward.io/mode=enforce")
    for srv in (r1, r2):
        assert wait_for(
            lambda s=srv: s.api("GET", "/api/v1/modes")["modes"].get(ns) == "enforce", 5
        )
        assert check(srv.ports["authz"], "/users/9", ns) == DENIED
        assert check(srv.ports["authz"], "/items", ns) == 0

    # an approval through r2 is the review r1 shows
    r2.api("POST", review, {"action": "approve"})
    assert wait_for(
        lambda: (r1.api("GET", review)["services"][0]["reviewed"] or {}).get("by") == "api-token",
        10,
    )
    assert [r["status"] for r in r1.api("GET", review)["services"][0]["rules"]] == ["approved"]
