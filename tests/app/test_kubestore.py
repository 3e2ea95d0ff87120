"""The cluster store on a real kube-apiserver: replicas end up with the union of what they
learned, tombstones hold, people's edits reach the other replicas, concurrent writers lose
nothing, outages and RBAC errors are clear, and serve's own ClusterRole is enough."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from meshward.app.install import PERMISSIONS, crds
from meshward.app.kubestore import KubeStore, KubeStoreUnavailable, object_ref
from meshward.app.store import SqliteStore, Store, StoreError
from meshward.core.allowlist import Allowlist, EndpointRule, ServiceProfile
from meshward.kube.watch import wait_for
from tests.support.apiserver import KubeCluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def allowlist_crd(kube_cluster: KubeCluster) -> None:
    kube_cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds()})
    )
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/allowlists.meshward.io", "--timeout=30s"
    )


@pytest.fixture
def make_store(kube_cluster: KubeCluster, allowlist_crd: None, tmp_path: Path) -> Iterator[Any]:
    made: list[KubeStore] = []

    def make(replica: str, api: Any = None, start: bool = True, **kw: Any) -> KubeStore:
        api = api or kube_cluster.api_client()
        s = KubeStore(
            api, replica=replica, alerts=SqliteStore(str(tmp_path / f"{replica}.db")), **kw
        )
        made.append(s)
        if start:
            s.start()
            assert s.wait_synced(15)
        return s

    yield make
    for s in made:
        s.close()


def learned(
    dest: str,
    paths: list[str],
    n: int = 1,
    source: str = "ns/web",
    profile: ServiceProfile | None = None,
) -> ServiceProfile:
    """An engine profile that saw each path `n` times (what a replica's engine would hold)."""
    p = profile or ServiceProfile(dest)
    for path in paths:
        for i in range(n):
            now = 1000.0 + i
            p.learn_source(source, now)
            p.seen.hit(now)
            rule = p.endpoint_for_learning("GET", path)
            assert rule is not None
            rule.seen.hit(now)
            rule.sources[source] = rule.sources.get(source, 0) + 1
            rule.query.setdefault("id", set()).add("int")
    return p


def counts(doc: dict[str, Any]) -> dict[str, int]:
    return {e["path"]: e["count"] for e in doc["endpoints"]}


def stored(kube: KubeCluster, dest: str) -> dict[str, Any]:
    ns, name = object_ref(dest, "meshward")
    return json.loads(
        kube.kubectl("get", "allowlists.meshward.io", name, "-n", ns, "-o", "json").stdout
    )


def test_is_a_store(make_store: Any) -> None:
    assert isinstance(make_store("p", start=False), Store)
    assert object_ref("shop/api", "meshward") == ("shop", "api")
    ns, name = object_ref("spiffe://cluster.local/ns/x/sa/Y_z", "meshward")
    assert ns == "meshward" and name.startswith("y-z.") and len(name) < 64


def test_two_replicas_end_up_with_the_union(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    dest = f"{kube_namespace}/api"
    a, b = make_store("a"), make_store("b")
    pa = learned(dest, ["/orders", "/shared"], 2)
    pb = learned(dest, ["/users/7", "/shared"], 3, source="ns/job")
    a.save_profiles({dest: pa.to_doc()})
    b.save_profiles({dest: pb.to_doc()})
    a.save_profiles({dest: pa.to_doc()})  # the same update again counts once
    want = {"/orders": 2, "/shared": 5, "/users/{int}": 3}
    assert counts(make_store("c", start=False).load_profiles()[dest]) == want
    # a's watch brings b's learning; a adopts it, learns more, and still counts once
    assert wait_for(lambda: dest in a._pending, 10)
    doc = a.changes()[dest]
    assert counts(doc) == want
    engine = ServiceProfile.from_doc(doc)
    learned(dest, ["/orders"], 4, profile=engine)
    a.save_profiles({dest: engine.to_doc()})
    assert counts(make_store("d", start=False).load_profiles()[dest])["/orders"] == 6
    obj = stored(kube_cluster, dest)
    assert {r["id"] for r in obj["status"]["replicas"]} == {"a", "b"}


def test_a_tombstone_holds_while_a_replica_keeps_learning(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    dest = f"{kube_namespace}/api"
    a, b = make_store("a"), make_store("b")
    pb = learned(dest, ["/items", "/admin"])
    b.save_profiles({dest: pb.to_doc()})
    ns, name = object_ref(dest, "meshward")
    kube_cluster.kubectl(
        "patch",
        "allowlists.meshward.io",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"removed": [{"method": "GET", "path": "/admin"}]}}),
    )
    for _ in range(3):  # b's engine still has /admin and keeps learning it
        learned(dest, ["/admin"], 2, profile=pb)
        b.save_profiles({dest: pb.to_doc()})
        doc = make_store("c", start=False).load_profiles()[dest]
        assert counts(doc) == {"/items": 1}
    assert all(r["path"] != "/admin" for r in stored(kube_cluster, dest)["spec"]["rules"])
    # the other replica is told: its engine replaces the profile and /admin is gone there too
    assert wait_for(
        lambda: (
            "/admin"
            not in counts(a.changes().get(dest) or {"endpoints": [{"path": "/admin", "count": 0}]})
        ),
        10,
    )
    # the tombstone is deleted: learning is allowed again
    kube_cluster.kubectl(
        "patch",
        "allowlists.meshward.io",
        name,
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"removed": []}}),
    )
    learned(dest, ["/admin"], 1, profile=pb)
    b.save_profiles({dest: pb.to_doc()})
    assert "/admin" in counts(make_store("d", start=False).load_profiles()[dest])


def test_a_person_edit_reaches_the_other_store_and_a_bad_rule_is_reported(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    dest = f"{kube_namespace}/api"
    a, b = make_store("a"), make_store("b")
    a.save_profiles({dest: learned(dest, ["/a"]).to_doc()})
    assert wait_for(lambda: dest in b.changes(), 10)
    ns, name = object_ref(dest, "meshward")
    t0 = time.monotonic()
    kube_cluster.kubectl(
        "patch",
        "allowlists.meshward.io",
        name,
        "-n",
        ns,
        "--type=json",
        "-p",
        json.dumps(
            [{"op": "add", "path": "/spec/rules/-", "value": {"method": "POST", "path": "/human"}}]
        ),
    )
    got: dict[str, Any] = {}
    assert wait_for(lambda: bool(got.update(b.changes()) or dest in got), 10)
    print(
        f"\nkubectl edit -> other store's changes(): {time.monotonic() - t0:.3f} s "
        "(kubectl process start included)"
    )
    assert {(e["method"], e["path"]) for e in got[dest]["endpoints"]} == {
        ("GET", "/a"),
        ("POST", "/human"),
    }
    # a broken hand edit: reported (counter, log, Event), the other rules stay
    kube_cluster.kubectl(
        "patch",
        "allowlists.meshward.io",
        name,
        "-n",
        ns,
        "--type=json",
        "-p",
        json.dumps(
            [
                {
                    "op": "add",
                    "path": "/spec/rules/-",
                    "value": {"method": "GET", "path": "/q", "query": {"id": ["no-such-class"]}},
                }
            ]
        ),
    )
    # (the readable part did not change, so it is no change for the engine)
    assert wait_for(lambda: b.stats.bad_objects >= 1, 10)
    assert set(counts(make_store("c", start=False).load_profiles()[dest])) == {"/a", "/human"}

    def warned() -> bool:
        items = json.loads(kube_cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
        return any(
            e["reason"] == "InvalidRules" and e["involvedObject"]["name"] == name
            for e in items["items"]
        )

    assert wait_for(warned, 10)
    # a's next save keeps the person's broken rule for them to fix, and writes its learning
    a.save_profiles({dest: learned(dest, ["/a", "/b"]).to_doc()})
    rules = stored(kube_cluster, dest)["spec"]["rules"]
    assert {r["path"] for r in rules} == {"/a", "/b", "/human", "/q"}


def test_concurrent_writers_lose_nothing(make_store: Any, kube_namespace: str) -> None:
    dest = f"{kube_namespace}/api"
    stores = [make_store(f"r{i}") for i in range(3)]
    rounds = 15  # below the cardinality bound K=16: no generalisation to {str}

    def replica(i: int) -> None:
        p = ServiceProfile(dest)
        for r in range(rounds):
            learned(dest, [f"/r{i}/{chr(97 + r)}x", "/shared"], 1, profile=p)
            stores[i].save_profiles({dest: p.to_doc()})

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    doc = make_store("check", start=False).load_profiles()[dest]
    want = {"/shared": 3 * rounds}
    want.update({f"/r{i}/{chr(97 + r)}x": 1 for i in range(3) for r in range(rounds)})
    assert counts(doc) == want
    print(f"\nconflicts retried: {sum(s.stats.conflicts for s in stores)}")


def test_outage_at_start_and_mid_save(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    dest = f"{kube_namespace}/api"
    dead = client.Configuration()
    dead.host, dead.verify_ssl = "https://127.0.0.1:1", False
    with pytest.raises(KubeStoreUnavailable, match="cannot reach the Kubernetes API server"):
        make_store("x", api=client.ApiClient(dead), start=False).load_profiles()
    a, b = make_store("a"), make_store("b")
    a.save_profiles({dest: learned(dest, ["/before"]).to_doc()})
    with kube_cluster.apiserver_down():
        with pytest.raises(KubeStoreUnavailable):
            a.save_profiles({dest: learned(dest, ["/before", "/during"]).to_doc()})
        assert a.pending_writes() == 1
    a.save_profiles({})  # the next flush writes what waited
    assert a.pending_writes() == 0
    assert counts(make_store("c", start=False).load_profiles()[dest]) == {
        "/before": 1,
        "/during": 1,
    }
    # b's watch relisted after the restart and delivers the change it missed
    got: dict[str, Any] = {}
    assert wait_for(
        lambda: bool(
            got.update(b.changes()) or "/during" in counts(got.get(dest, {"endpoints": []}))
        ),
        30,
    )


def test_writes_are_capped_per_flush(make_store: Any, kube_namespace: str) -> None:
    a = make_store("a", max_writes=2)
    docs = {
        f"{kube_namespace}/s{i}": learned(f"{kube_namespace}/s{i}", ["/x"]).to_doc()
        for i in range(5)
    }
    a.save_profiles(docs)
    assert a.stats.objects_written == 2 and a.pending_writes() == 3 and a.stats.deferred == 3
    a.save_profiles({})
    a.save_profiles({})
    assert a.stats.objects_written == 5 and a.pending_writes() == 0
    assert set(make_store("c", start=False).load_profiles()) >= set(docs)


def test_modes_are_namespace_labels(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    a = make_store("a")
    v = a.modes_version()
    kube_cluster.kubectl("label", "namespace", kube_namespace, "meshward.io/mode=enforce")
    assert wait_for(lambda: a.modes().get(kube_namespace) == "enforce", 10)
    assert a.modes_version() > v
    kube_cluster.kubectl(
        "label", "namespace", kube_namespace, "meshward.io/mode=bogus", "--overwrite"
    )
    assert wait_for(lambda: kube_namespace not in a.modes(), 10)
    with pytest.raises(StoreError, match=r"kubectl label namespace .* meshward.io/mode=monitor"):
        a.set_mode(kube_namespace, "monitor")


def test_alerts_go_to_the_injected_store(make_store: Any) -> None:
    a = make_store("a", start=False)
    a.add_alerts([{"namespace": "n", "destination": "n/api", "score": 0.9}])
    assert a.alerts(namespace="n")[0]["score"] == 0.9


def test_forbidden_writes_name_verb_and_resource(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    kube_cluster.kubectl(
        "create",
        "clusterrole",
        "kubestore-read",
        "--verb=get,list,watch",
        "--resource=allowlists.meshward.io,namespaces",
        check=False,
    )
    kube_cluster.kubectl(
        "create",
        "clusterrolebinding",
        "kubestore-bob",
        "--clusterrole=kubestore-read",
        "--user=bob",
        check=False,
    )
    bob = make_store("bob", api=kube_cluster.user_client("bob"))
    dest = f"{kube_namespace}/api"
    with pytest.raises(StoreError) as err:
        bob.save_profiles({dest: learned(dest, ["/x"]).to_doc()})
    assert str(err.value) == (
        'cluster store: RBAC forbidden: user "bob" cannot create '
        f'allowlists.meshward.io in namespace "{kube_namespace}"'
    )
    assert bob.pending_writes() == 1


def test_forbidden_is_clear_and_serves_role_is_enough(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    with pytest.raises(StoreError) as err:
        make_store("x", api=kube_cluster.user_client("alice"), start=False).load_profiles()
    assert str(err.value) == (
        'cluster store: RBAC forbidden: user "alice" cannot list '
        "allowlists.meshward.io (cluster-wide)"
    )
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "kubestore-serve"},
        "rules": PERMISSIONS["serve"],
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(role))
    kube_cluster.kubectl(
        "create",
        "clusterrolebinding",
        "kubestore-agent",
        "--clusterrole=kubestore-serve",
        "--user=agent",
        check=False,
    )
    dest = f"{kube_namespace}/api"
    a = make_store("a", api=kube_cluster.user_client("agent"))
    b = make_store("b", api=kube_cluster.user_client("agent"))
    a.load_profiles()
    a.save_profiles({dest: learned(dest, ["/x"]).to_doc()})
    b.save_profiles({dest: learned(dest, ["/y"]).to_doc()})
    assert wait_for(lambda: dest in a.changes(), 10)
    kube_cluster.kubectl("label", "namespace", kube_namespace, "meshward.io/mode=monitor")
    assert wait_for(lambda: a.modes().get(kube_namespace) == "monitor", 10)
    a.delete_profile(dest)
    assert dest not in b.load_profiles()
    assert wait_for(lambda: b.changes().get(dest, {}).get("endpoints") == [], 10)


def realistic(dest: str, rules: int) -> ServiceProfile:
    """A large profile as traffic builds it: nested paths, ids, query parameters, JSON bodies,
    a few callers per endpoint."""
    p = ServiceProfile(dest)
    for i in range(rules):
        method = ("GET", "POST", "PUT", "DELETE")[i % 4]
        rule = EndpointRule(method, f"/api/v2/area{i // 40}/resource{i % 40}/{{int}}/items")
        p.add_rule(rule)
        rule.seen.hit(1_764_000_000.0 + i)
        rule.sources = {f"team-{i % 7}/frontend-{j}": 10 + j for j in range(3)}
        rule.query = {k: {"int", "word"} for k in ("page", "limit", "sort", "filter")}
        rule.body = {
            f"data.item.{k}": {"text"}
            for k in ("name", "id", "tags[]", "price", "owner.email", "created")
        }
        rule.content_types = {"application/json"}
        rule.body_kinds = {"json"}
        rule.statuses = {"2xx", "4xx"}
        rule.learn_size(700)
    return p


def test_a_large_profile_fits_and_an_oversized_one_is_trimmed(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    dest = f"{kube_namespace}/big"
    stores = [make_store(f"r{i}", start=False) for i in range(3)]
    profile = realistic(dest, 1000)
    assert profile.endpoints == 1000
    t0 = time.monotonic()
    for s in stores:  # three replicas that learned the same: three sets of counters
        s.save_profiles({dest: profile.to_doc()})
    took = time.monotonic() - t0
    raw = kube_cluster.kubectl(
        "get", "allowlists.meshward.io", "big", "-n", kube_namespace, "-o", "json"
    ).stdout
    obj = json.loads(raw)
    spec = len(json.dumps(obj["spec"], separators=(",", ":")))
    status = len(json.dumps(obj["status"], separators=(",", ":")))
    print(
        f"\n1,000-rule object: spec {spec} B, status (3 replicas) {status} B, whole object "
        f"as served {len(json.dumps(obj, separators=(',', ':')))} B; "
        f"3 saves in {took:.2f} s"
    )
    assert len(obj["spec"]["rules"]) == 1000
    small = make_store("t", start=False, max_object_bytes=200_000)
    small.save_profiles(
        {f"{kube_namespace}/big2": realistic(f"{kube_namespace}/big2", 1000).to_doc()}
    )
    assert 0 < small.stats.trimmed < 1000
    kept = small.load_profiles()[f"{kube_namespace}/big2"]["endpoints"]
    assert len(kept) + small.stats.trimmed == 1000
    Allowlist().import_doc({"services": [stores[0].load_profiles()[dest]]})


def test_write_rate(make_store: Any, kube_namespace: str) -> None:
    a = make_store("a", max_writes=1000, start=False)
    docs = {
        f"{kube_namespace}/w{i}": learned(f"{kube_namespace}/w{i}", ["/x", "/y"]).to_doc()
        for i in range(60)
    }
    t0 = time.monotonic()
    a.save_profiles(docs)
    new = time.monotonic() - t0
    for d in docs.values():
        d["endpoints"][0]["count"] += 1
    t0 = time.monotonic()
    a.save_profiles(docs)
    upd = time.monotonic() - t0
    b = make_store("b")
    lags = []
    for i in range(20):  # one replica's save -> the other's changes()
        dest = f"{kube_namespace}/w{i}"
        docs[dest]["endpoints"][0]["count"] += 1
        b.changes()
        t0 = time.monotonic()
        a.save_profiles({dest: docs[dest]})
        assert wait_for(lambda dest=dest: dest in b.changes(), 10, interval=0.002)
        lags.append(time.monotonic() - t0)
    lags.sort()
    print(
        f"\nsave -> other store's changes(): p50 {lags[10] * 1000:.0f} ms, "
        f"max {lags[-1] * 1000:.0f} ms (the save's own get + write included)"
    )
    print(
        f"\none store: {60 / new:.0f} new objects/s ({a.stats.writes} API writes), "
        f"{60 / upd:.0f} updated objects/s (get + status replace)"
    )


def test_gone_replicas_are_folded(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    dest = f"{kube_namespace}/api"
    for rid in ("old-1", "old-2"):
        make_store(rid, start=False).save_profiles({dest: learned(dest, ["/x"], 2).to_doc()})
    a = make_store("new-1", start=False, live_replicas=lambda: {"new-1", "new-2"})
    engine = ServiceProfile.from_doc(a.load_profiles()[dest])
    a.save_profiles({dest: learned(dest, ["/x", "/y"], 2, profile=engine).to_doc()})
    ids = {r["id"] for r in stored(kube_cluster, dest)["status"]["replicas"]}
    assert ids == {"new-1", "retired"}
    assert counts(make_store("c", start=False).load_profiles()[dest]) == {"/x": 6, "/y": 2}


def test_one_unwritable_object_does_not_block_the_others(
    kube_cluster: KubeCluster, make_store: Any, kube_namespace: str
) -> None:
    squatter = {
        "apiVersion": "meshward.io/v1alpha1",
        "kind": "Allowlist",
        "metadata": {"name": "api", "namespace": kube_namespace},
        "spec": {"destination": "elsewhere/api"},
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(squatter))
    a = make_store("a", start=False)
    api, other = f"{kube_namespace}/api", f"{kube_namespace}/other"
    a.save_profiles({api: learned(api, ["/x"]).to_doc(), other: learned(other, ["/y"]).to_doc()})
    assert a.stats.errors == 1 and a.pending_writes() == 1
    assert set(a.load_profiles()) >= {other}


def test_own_write_after_a_pending_change_keeps_our_learning(
    make_store: Any, kube_namespace: str
) -> None:
    """Another writer's change is pending (seen by the watch, not drained) when this replica
    writes: what it then hands its engine must hold its own learning too, else the engine of a
    replica in enforce would lose rules it learned itself."""
    dest = f"{kube_namespace}/api"
    a, b = make_store("a"), make_store("b")
    b.save_profiles({dest: learned(dest, ["/b"]).to_doc()})
    assert wait_for(lambda: dest in a._pending, 10)
    a.save_profiles({dest: learned(dest, ["/a"]).to_doc()})
    (change,) = [c for c in a.take_changes() if c.destination == dest]  # (others' tests too)
    assert change.doc is not None and set(counts(change.doc)) == {"/a", "/b"}
