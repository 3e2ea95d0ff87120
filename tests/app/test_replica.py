"""`meshward serve --store kubernetes`: replicas share what they learned through the real API
server, behind real Envoy sidecars; kubectl edits and namespace labels reach running replicas;
the API server going away (at start, mid-run) and kill -9 mid-merge."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshward.app.kubestore import Change
from meshward.app.replica import adopt
from meshward.core.allowlist import ServiceProfile
from meshward.core.allowlist_merge import Shared, contribution, merge
from meshward.core.engine import Engine
from meshward.core.threats.inspection import NoDetector
from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.envoyproc import EnvoyProcess
from meshward.kube.watch import wait_for
from meshward.runtime.client import ApiError
from tests.support.apiserver import KubeCluster
from tests.support.envoy_http import ServerThread, http
from tests.support.replicas import (
    FLUSH,
    ServeProcess,
    check,
    served_paths,
    stored_paths,
    wait_ready,
)

DENIED = 7  # google.rpc PERMISSION_DENIED


def profile(dest: str, paths: list[str], n: int = 1) -> ServiceProfile:
    p = ServiceProfile(dest)
    for path in paths:
        for _ in range(n):
            p.learn_source("ns/web", 1000.0)
            p.seen.hit(1000.0)
            rule = p.endpoint_for_learning("GET", path)
            assert rule is not None
            rule.seen.hit(1000.0)
            rule.sources["ns/web"] = rule.sources.get("ns/web", 0) + 1
    return p


def counts(engine: Engine, dest: str) -> dict[str, int]:
    p = engine.allowlist.get(dest)
    return {} if p is None else {r.template: r.seen.count for r in p.rules()}


# ---- adopting changes (no API server)


def test_adopt_replaces_or_keeps_what_was_not_written() -> None:
    dest = "shop/api"
    engine = Engine(detector=NoDetector())
    engine.load({dest: profile(dest, ["/a"], 2).to_doc()}, {})
    base = contribution(profile(dest, ["/a"], 2).to_doc(), "me")
    other = contribution(profile(dest, ["/b"], 3).to_doc(), "other")
    new = merge(base, other)
    # nothing learned since the drain: the store's version replaces the engine's
    adopt(engine, "me", [Change(dest, new, base, _doc(new))])
    assert counts(engine, dest) == {"/a": 2, "/b": 3}
    # learned meanwhile (not drained yet): joined, the local learning stays, nothing doubles
    engine.drain()
    engine.load({dest: profile(dest, ["/c"], 1).to_doc()}, {})  # as learning would add it
    engine._dirty.add(dest)
    newer = merge(new, contribution(profile(dest, ["/d"], 1).to_doc(), "third"))
    adopt(engine, "me", [Change(dest, newer, new, _doc(newer))])
    assert counts(engine, dest) == {"/a": 2, "/b": 3, "/c": 1, "/d": 1}
    # a tombstone a person wrote wins over the local copy
    gone = Shared(dest, dict(newer.rules), set(newer.sources), {("GET", "/b")}, newer.replicas)
    adopt(engine, "me", [Change(dest, gone, newer, _doc(gone))])
    assert "/b" not in counts(engine, dest)
    # the object deleted: the profile goes
    adopt(engine, "me", [Change(dest, None, gone, None)])
    assert engine.allowlist.get(dest) is None


def _doc(s: Shared) -> dict[str, object]:
    from meshward.core.allowlist_merge import profile_doc

    return profile_doc(s)


# ---- on the real API server


def sidecar(srv: ServerThread, app: int, ns: str, mode: str, envoy_bin: str) -> EnvoyProcess:
    boot = render_bootstrap(
        0,
        f"127.0.0.1:{app}",
        ns,
        "api",
        mode,
        authz_port=srv.ports["authz"],
        tap_port=srv.ports["tap"],
    )
    return EnvoyProcess(boot, envoy=envoy_bin, name=f"{mode}-sidecar")


@pytest.mark.integration
def test_two_replicas_behind_sidecars_then_a_fresh_one_enforces(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    replica: Callable[..., ServerThread],
    envoy_bin: str,
    echo_app: int,
    alerts_dsn: str,
) -> None:
    ns, dest = kube_namespace, f"{kube_namespace}/api"
    r1 = replica("r1", alerts_dsn=alerts_dsn)
    r2 = replica("r2", alerts_dsn=alerts_dsn)
    wait_ready(r1)
    wait_ready(r2)

    # the tap's verdicts are counted per edge in the one store: r2 reads r1's too
    def allowed() -> int:
        edges = r2.api("GET", f"/api/v1/edges?since=10m&namespace={ns}")["edges"]
        return sum(e["allowed"] for e in edges if e["destination"] == dest)

    with (
        sidecar(r1, echo_app, ns, "learn", envoy_bin) as e1,
        sidecar(r2, echo_app, ns, "learn", envoy_bin) as e2,
    ):
        for i in range(1, 4):
            assert http(e1.port, f"/api/items/{i}")[0] == 200
            assert http(e2.port, "/api/orders")[0] == 200
        # (the sidecars stay up until their tap copies are in: stopping one cuts its streams)
        assert wait_for(lambda: allowed() == 6, 10), allowed()
    want = {"/api/items/{int}", "/api/orders"}
    assert wait_for(lambda: want <= stored_paths(kube_cluster, dest), 10), stored_paths(
        kube_cluster, dest
    )
    # each running replica adopted what the other learned, within a flush interval or so
    assert wait_for(lambda: want <= served_paths(r1, dest), 5)
    assert wait_for(lambda: want <= served_paths(r2, dest), 5)
    obj = json.loads(
        kube_cluster.kubectl("get", "allowlists.meshward.io", "api", "-n", ns, "-o", "json").stdout
    )
    assert {r["id"] for r in obj["status"]["replicas"]} == {"r1", "r2"}
    kube_cluster.kubectl("label", "namespace", ns, "meshward.io/mode=enforce")
    r3 = replica("r3", alerts_dsn=alerts_dsn)
    wait_ready(r3)
    assert r3.api("GET", "/api/v1/modes")["modes"].get(ns) == "enforce"
    with sidecar(r3, echo_app, ns, "enforce", envoy_bin) as e3:
        assert http(e3.port, "/api/items/42")[0] == 200
        assert http(e3.port, "/api/orders")[0] == 200
        assert http(e3.port, "/admin/export")[0] == 403  # the reasons go to the alert only
    # the running ones follow the label too
    assert wait_for(lambda: r1.api("GET", "/api/v1/modes")["modes"].get(ns) == "enforce", 5)
    assert check(r1.ports["authz"], "/admin/export", ns) == DENIED
    # one alerts store: r2 reads the denials r3 and r1 raised; a rate-limited Event says so
    assert wait_for(
        lambda: (
            {"r1", "r3"}
            <= {a.get("replica") for a in r2.api("GET", "/api/v1/alerts?limit=50")["alerts"]}
        ),
        5,
    )

    def denied_events() -> list[dict[str, object]]:
        items = json.loads(kube_cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
        return [e for e in items["items"] if e["reason"] == "RequestDenied"]

    assert wait_for(lambda: len(denied_events()) >= 1, 5)
    assert all("/admin/export" in str(e["message"]) for e in denied_events())


@pytest.mark.integration
def test_a_kubectl_removal_takes_effect_in_a_running_replica(
    kube_cluster: KubeCluster, kube_namespace: str, replica: Callable[..., ServerThread]
) -> None:
    ns, dest = kube_namespace, f"{kube_namespace}/api"
    r1 = replica("r1")
    wait_ready(r1)
    port = r1.ports["authz"]
    for path in ("/items", "/admin"):
        assert check(port, path, ns) == 0
    assert wait_for(lambda: {"/items", "/admin"} <= stored_paths(kube_cluster, dest), 10)
    kube_cluster.kubectl("label", "namespace", ns, "meshward.io/mode=enforce")
    assert wait_for(lambda: r1.api("GET", "/api/v1/modes")["modes"].get(ns) == "enforce", 5)
    assert check(port, "/admin", ns) == 0
    t0 = time.monotonic()
    kube_cluster.kubectl(
        "patch",
        "allowlists.meshward.io",
        "api",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"removed": [{"method": "GET", "path": "/admin"}]}}),
    )
    assert wait_for(lambda: check(port, "/admin", ns) == DENIED, 5)
    # the mode is the label: the API says how to change it instead of failing
    with pytest.raises(ApiError) as err:
        r1.client.set_mode(ns, "learn")
    assert err.value.status == 409 and "kubectl label namespace" in str(err.value)
    took = time.monotonic() - t0
    print(f"\nkubectl patch -> denied by the running replica: {took:.2f} s (flush {FLUSH} s)")
    assert check(port, "/items", ns) == 0


@pytest.mark.integration
def test_not_ready_until_the_api_server_answers(
    kube_cluster: KubeCluster, kube_namespace: str, replica: Callable[..., ServerThread]
) -> None:
    ns, dest = kube_namespace, f"{kube_namespace}/api"
    seed = replica("seed")
    wait_ready(seed)
    assert check(seed.ports["authz"], "/known", ns) == 0
    assert wait_for(lambda: "/known" in stored_paths(kube_cluster, dest), 10)
    kube_cluster.kubectl("label", "namespace", ns, "meshward.io/mode=enforce")
    with kube_cluster.apiserver_down():
        late = replica("late")
        time.sleep(2)
        assert late.server is not None and not late.server.ready
        assert "authz" not in late.ports  # sidecars apply their fail mode meanwhile
        assert late.client.request("GET", "/healthz") is not None
        # the seed keeps serving from what it knows
        assert check(seed.ports["authz"], "/known", ns) == 0
        assert check(seed.ports["authz"], "/unknown", ns) == DENIED
    wait_ready(late, 30)
    assert check(late.ports["authz"], "/known", ns) == 0
    assert check(late.ports["authz"], "/unknown", ns) == DENIED  # the mode was known first


@pytest.mark.integration
def test_api_server_restart_learning_catches_up(
    kube_cluster: KubeCluster, kube_namespace: str, replica: Callable[..., ServerThread]
) -> None:
    ns, dest = kube_namespace, f"{kube_namespace}/api"
    r1, r2 = replica("r1"), replica("r2")
    wait_ready(r1)
    wait_ready(r2)
    assert check(r1.ports["authz"], "/before", ns) == 0
    assert wait_for(lambda: "/before" in stored_paths(kube_cluster, dest), 10)
    with kube_cluster.apiserver_down():
        assert check(r1.ports["authz"], "/during", ns) == 0  # learned, written later
        time.sleep(3 * FLUSH)  # a few flushes fail and keep the batch
    assert wait_for(lambda: "/during" in stored_paths(kube_cluster, dest), 20)
    # the watches came back: r2 gets r1's learning, and r1 gets r2's
    assert wait_for(lambda: "/during" in served_paths(r2, dest), 20)
    assert check(r2.ports["authz"], "/after", ns) == 0
    assert wait_for(lambda: "/after" in served_paths(r1, dest), 20)


@pytest.mark.integration
def test_kill_9_mid_merge_loses_at_most_the_last_flush(
    kube_cluster: KubeCluster, kube_namespace: str, allowlist_crd: None, tmp_path: Path
) -> None:
    ns = kube_namespace
    kubeconfig = kube_cluster.write_kubeconfig(kube_cluster.admin_token)
    interval = 0.3
    victim = ServeProcess(kubeconfig, "victim", tmp_path, "--flush-interval", str(interval))
    other = ServeProcess(kubeconfig, "other", tmp_path, "--flush-interval", str(interval))
    try:
        victim.wait_ready()
        other.wait_ready()
        tls = victim.tls(ns)  # the same CA signs for both (one workdir)
        sent: list[float] = []
        stop = threading.Event()

        def other_learns() -> None:  # the other replica merges into the same object meanwhile
            while not stop.is_set():
                check(other.authz, "/other", ns, tls=tls)
                time.sleep(0.01)

        t = threading.Thread(target=other_learns, daemon=True)
        t.start()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert check(victim.authz, "/victim", ns, tls=tls) == 0
            sent.append(time.monotonic())
        victim.kill()  # a flush every 0.3 s, each a get-merge-replace: one is in flight or near
        killed = time.monotonic()
        stop.set()
        t.join(5)
        obj = json.loads(
            kube_cluster.kubectl(
                "get", "allowlists.meshward.io", "api", "-n", ns, "-o", "json"
            ).stdout
        )
        seen = {r["id"]: r["seen"][0] for r in obj["status"]["replicas"]}
        # what the victim judged more than one flush interval (+ the write's time) before
        # the kill is stored; at most the last interval's Checks are lost
        older = sum(1 for when in sent if when < killed - interval - 0.3)
        print(f"\nkill -9: {len(sent)} Checks, {seen.get('victim', 0)} stored, {older} older")
        assert older <= seen.get("victim", 0) <= len(sent)
        assert seen.get("other", 0) > 0  # the other's learning is intact
        assert {r["path"] for r in obj["spec"]["rules"]} == {"/victim", "/other"}
    finally:
        victim.stop()
        other.stop()


@pytest.mark.integration
def test_alert_events_are_rate_limited(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    from meshward.app.alertevents import AlertEvents

    ns = kube_namespace
    ev = AlertEvents(kube_cluster.api_client(), "r1", every=60, per_call=10)
    deny = {"namespace": ns, "destination": f"{ns}/api", "verdict": "deny", "path": "/x\x00"}
    threat = {**deny, "verdict": "alert", "threats": [{"name": "SQL.Injection", "evidence": "s"}]}
    quiet = {**deny, "verdict": "alert", "reasons": ["unknown-path"]}  # monitor: no Event
    ev.record([deny] * 5 + [threat, quiet], now=1000.0)
    ev.record([deny] * 3, now=1030.0)  # within the minute: counted for later
    ev.record([], now=1061.0)
    items = json.loads(kube_cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
    got = sorted((e["reason"], e["count"]) for e in items["items"])
    assert got == [("RequestDenied", 3), ("RequestDenied", 5), ("ThreatDetected", 1)]
    msg = next(e["message"] for e in items["items"] if e["reason"] == "ThreatDetected")
    assert "SQL.Injection" in msg and "evidence" not in msg and "\x00" not in msg
    assert ev.created == 3 and ev.suppressed == 6


@pytest.mark.integration
def test_serve_runs_under_the_installs_service_account(
    kube_cluster: KubeCluster, kube_namespace: str, allowlist_crd: None, tmp_path: Path
) -> None:
    """The serve Deployment's identity and environment as `meshward install` renders them:
    its ClusterRole is enough for the cluster store, the pod list (folding gone replicas) and
    alert Events."""
    import base64
    import uuid

    from meshward.app.install import InstallOptions, render, serve_env

    home = f"mw-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", home)
    opts = InstallOptions(namespace=home, kube_version=(1, 20))
    wanted = [
        o
        for o in render(opts)
        if o["metadata"]["name"] == "meshward-serve"
        and o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    ]
    kube_cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": wanted})
    )
    pod = "meshward-serve-6d4f9-abcde"
    env = {e["name"] for e in serve_env(opts)}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env
    kube_cluster.kubectl(
        "run", pod, "-n", home, "--image=meshward", "--labels=app.kubernetes.io/name=meshward-serve"
    )

    def token() -> str | None:
        sa = json.loads(
            kube_cluster.kubectl("get", "sa", "meshward-serve", "-n", home, "-o", "json").stdout
        )
        for ref in sa.get("secrets") or []:
            secret = json.loads(
                kube_cluster.kubectl("get", "secret", ref["name"], "-n", home, "-o", "json").stdout
            )
            return base64.b64decode(secret["data"]["token"]).decode()
        return None

    assert wait_for(lambda: token() is not None, 20), "no service-account token was made"
    kubeconfig = kube_cluster.write_kubeconfig(str(token()))
    srv = ServeProcess(
        kubeconfig,
        pod,
        tmp_path,
        "--flush-interval",
        "0.2",
        env={"POD_NAME": pod, "POD_NAMESPACE": home},
    )
    try:
        srv.wait_ready()
        ns = kube_namespace
        tls = srv.tls(ns)
        assert check(srv.authz, "/known", ns, tls=tls) == 0
        assert wait_for(lambda: "/known" in stored_paths(kube_cluster, f"{ns}/api"), 10)
        kube_cluster.kubectl("label", "namespace", ns, "meshward.io/mode=enforce")
        assert wait_for(lambda: srv.mode(ns) == "enforce", 10)  # (a Check before would learn)
        assert check(srv.authz, "/unknown", ns, tls=tls) == DENIED

        def events() -> set[str]:
            items = json.loads(kube_cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
            return {e["reason"] for e in items["items"]}

        assert wait_for(lambda: "RequestDenied" in events(), 10)
        obj = json.loads(
            kube_cluster.kubectl(
                "get", "allowlists.meshward.io", "api", "-n", ns, "-o", "json"
            ).stdout
        )
        assert [r["id"] for r in obj["status"]["replicas"]] == [pod]
        assert "forbidden" not in srv.log.read_text().lower()
    finally:
        srv.stop()
        kube_cluster.kubectl("delete", "namespace", home, "--wait=false", check=False)
