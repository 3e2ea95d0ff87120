"""meshward controller: pure desired state, then the real loop on a real kube-apiserver with
Istio's CRDs: filters follow labels (off and pruning included), tampering is undone, only the
Lease holder writes, and the install's least-privilege ClusterRole is enough."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from meshward.app.controller import Controller, ControllerConfig, desired, injected, mode_of
from meshward.app.install import InstallOptions, rbac
from meshward.istio.envoyfilter import render
from meshward.kube.leader import LeaderElector
from meshward.kube.watch import wait_for
from tests.support.apiserver import ISTIO_CRDS, KubeCluster

CONFIG = ControllerConfig(resync=0.5)


# ---- pure desired state


def test_injection_and_mode_labels() -> None:
    assert injected({"istio-injection": "enabled"})
    assert injected({"istio.io/rev": "1-24"})
    assert not injected({"istio.io/rev": "1-24", "istio-injection": "disabled"})
    assert not injected({})
    assert mode_of({}) == "learn"
    assert mode_of({"meshward.io/mode": "enforce"}) == "enforce"
    assert mode_of({"meshward.io/mode": "off"}) == "off"
    assert mode_of({"meshward.io/mode": "enfroce"}) is None


def test_desired_objects() -> None:
    namespaces = {
        "a": {"istio-injection": "enabled"},
        "b": {"istio.io/rev": "1-24", "meshward.io/mode": "enforce"},
        "c": {"meshward.io/mode": "enforce"},  # no sidecars: nothing to configure
        "d": {"istio-injection": "enabled", "meshward.io/mode": "off"},
        "e": {"istio-injection": "enabled", "meshward.io/mode": "bogus"},
    }
    want, invalid = desired(namespaces, ControllerConfig())
    assert set(want) == {
        (kind, ns, "meshward") for kind in ("EnvoyFilter", "DestinationRule") for ns in "ab"
    }
    assert invalid == {"e"}
    assert want[("EnvoyFilter", "b", "meshward")] == render("b", "enforce")["objects"][0]
    assert want[("DestinationRule", "b", "meshward")] == render("b", "enforce")["objects"][1]
    provider, _ = desired(namespaces, ControllerConfig(style="extension-provider"))
    assert ("AuthorizationPolicy", "b", "meshward-ext-authz") in provider


# ---- on the real API server


@pytest.fixture
def running(kube_cluster: KubeCluster, istio_crds: None) -> Iterator[Controller]:
    api = kube_cluster.api_client()
    ctl = Controller(api, CONFIG)
    stop = threading.Event()
    ctl.start_watches()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_for(ctl.synced, 20)
        yield ctl
    finally:
        stop.set()
        ctl.wake.set()
        thread.join(10)
        ctl.stop_watches()
        api.close()


def _ns(kube: KubeCluster, labels: dict[str, str]) -> str:
    name = f"c-{uuid.uuid4().hex[:8]}"
    kube.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        ),
    )
    return name


def _filters(
    kube: KubeCluster, ns: str, kind: str = "envoyfilters.networking.istio.io"
) -> list[dict[str, Any]]:
    out = kube.kubectl("get", kind, "-n", ns, "-o", "json", "--show-managed-fields")
    return json.loads(out.stdout)["items"]


RULES = "destinationrules.networking.istio.io"  # the tap's stream window (istio/envoyfilter.py)


def _label(kube: KubeCluster, ns: str, value: str | None) -> None:
    arg = "meshward.io/mode-" if value is None else f"meshward.io/mode={value}"
    kube.kubectl("label", "namespace", ns, arg, "--overwrite")


def _eventually(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.integration
def test_filters_follow_the_mode_label(kube_cluster: KubeCluster, running: Controller) -> None:
    kube = kube_cluster
    ns = _ns(kube, {"istio-injection": "enabled"})
    plain = _ns(kube, {"meshward.io/mode": "enforce"})  # no injection

    def mode_is(mode: str) -> None:
        (f,) = _filters(kube, ns)
        assert f["metadata"]["labels"]["meshward.io/mode"] == mode
        assert f["spec"] == render(ns, mode)["objects"][0]["spec"]
        managers = {m["manager"] for m in f["metadata"]["managedFields"]}
        assert managers == {"meshward-controller"}
        (rule,) = _filters(kube, ns, RULES)
        assert rule["spec"] == render(ns, mode)["objects"][1]["spec"]

    _eventually(lambda: mode_is("learn"))  # no label: learn
    _label(kube, ns, "enforce")
    _eventually(lambda: mode_is("enforce"))
    _label(kube, ns, "monitor")
    _eventually(lambda: mode_is("monitor"))
    assert _filters(kube, plain) == []
    # the Namespace tells what happened
    events = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    assert {"FiltersApplied"} <= {e["reason"] for e in events}

    _label(kube, ns, "off")
    _eventually(lambda: _assert_empty(_filters(kube, ns) + _filters(kube, ns, RULES)))
    _label(kube, ns, None)
    _eventually(lambda: mode_is("learn"))
    before = running.counters.pruned
    kube.kubectl("label", "namespace", ns, "istio-injection-")  # injection removed: pruned
    _eventually(lambda: _assert_empty(_filters(kube, ns) + _filters(kube, ns, RULES)))
    # at least its two objects (the count is the controller's: an earlier test's namespace
    # being deleted meanwhile may add its own)
    assert running.counters.pruned >= before + 2
    kube.kubectl("label", "namespace", ns, "istio-injection=enabled")
    _eventually(lambda: mode_is("learn"))
    # namespace deleted: its filter goes (pruned, or collected with the namespace) and the
    # controller forgets it without errors
    kube.kubectl("delete", "namespace", ns, "--wait=false")
    _eventually(lambda: _assert_empty([k for k in running.live if k[1] == ns]))
    assert running.counters.errors == 0


def _assert_empty(items: list[Any]) -> None:
    assert items == []


@pytest.mark.integration
def test_tampering_is_undone_and_bad_labels_warn(
    kube_cluster: KubeCluster, running: Controller
) -> None:
    kube = kube_cluster
    ns = _ns(kube, {"istio-injection": "enabled", "meshward.io/mode": "enforce"})
    _eventually(lambda: _assert_count(_filters(kube, ns), 1))
    want = render(ns, "enforce")["objects"][0]["spec"]
    kube.kubectl(
        "patch",
        "envoyfilters.networking.istio.io",
        "meshward",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"configPatches": []}}),
    )
    _eventually(lambda: _assert_spec(_filters(kube, ns), want))
    kube.kubectl("delete", "envoyfilters.networking.istio.io", "meshward", "-n", ns)
    _eventually(lambda: _assert_spec(_filters(kube, ns), want))

    _label(kube, ns, "enfroce")  # a typo: no silent switch to learn, the filter stays
    time.sleep(1.5)
    _assert_spec(_filters(kube, ns), want)

    def warned() -> None:
        events = json.loads(kube.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
        reasons = {(e["type"], e["reason"]) for e in events["items"]}
        assert ("Warning", "InvalidMode") in reasons

    _eventually(warned)


def _assert_count(items: list[Any], n: int) -> None:
    assert len(items) == n


def _assert_spec(items: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    assert len(items) == 1 and items[0]["spec"] == spec


@pytest.mark.integration
def test_applied_filters_match_istios_schema(
    kube_cluster: KubeCluster, running: Controller
) -> None:
    """The server kept every field (a structural schema prunes unknown ones), so what runs is
    exactly what tests/istio validates against the CRD schema and loads into Envoy."""
    jsonschema = pytest.importorskip("jsonschema")
    ns = _ns(kube_cluster, {"istio-injection": "enabled", "meshward.io/mode": "enforce"})
    _eventually(lambda: _assert_count(_filters(kube_cluster, ns), 1))
    (live,) = _filters(kube_cluster, ns)
    crd = next(
        d
        for d in yaml.safe_load_all(ISTIO_CRDS.read_text())
        if d and d["metadata"]["name"] == "envoyfilters.networking.istio.io"
    )
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha3")
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    jsonschema.validate(live["spec"], schema)
    assert live["spec"] == render(ns, "enforce")["objects"][0]["spec"]


@pytest.mark.integration
def test_only_the_leader_writes_with_least_privilege(
    kube_cluster: KubeCluster, istio_crds: None
) -> None:
    """Two controllers under the install's own ClusterRole (bound to an unprivileged user):
    one leads and writes; when it stops, the other takes over."""
    kube = kube_cluster
    roles = [
        o
        for o in rbac(InstallOptions(namespace="meshward-ctl"))
        if o["kind"] in ("ClusterRole", "Role") and "controller" in o["metadata"]["name"]
    ]
    kube.kubectl("create", "namespace", "meshward-ctl", check=False)
    kube.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": roles})
    )
    kube.kubectl(
        "create",
        "clusterrolebinding",
        "ctl-agent",
        "--clusterrole=meshward-controller",
        "--user=agent",
        check=False,
    )
    kube.kubectl(
        "create",
        "rolebinding",
        "ctl-agent-lease",
        "-n",
        "meshward-ctl",
        "--role=meshward-controller-lease",
        "--user=agent",
        check=False,
    )
    stop = threading.Event()
    pairs = []
    for ident in ("ctl-1", "ctl-2"):
        api = kube.user_client("agent")
        ctl = Controller(
            api, ControllerConfig(resync=0.5, namespace="meshward-ctl", identity=ident)
        )
        elector = LeaderElector(
            api,
            "meshward-ctl",
            "meshward-controller",
            ident,
            lease_duration=3,
            renew_deadline=2,
            retry_period=0.4,
            on_started_leading=ctl.wake.set,
        )
        ctl.start_watches()
        elector.start()
        t = threading.Thread(target=ctl.run, args=(stop, elector.leading), daemon=True)
        t.start()
        pairs.append((ctl, elector, t, api))
    try:
        assert wait_for(lambda: sum(e.is_leader for _, e, _, _ in pairs) == 1, 15)
        ns = _ns(kube, {"istio-injection": "enabled"})
        _eventually(lambda: _assert_count(_filters(kube, ns), 1))
        leader = next(p for p in pairs if p[1].is_leader)
        other = next(p for p in pairs if not p[1].is_leader)
        assert leader[0].counters.applied >= 1 and other[0].counters.applied == 0
        assert leader[0].counters.errors == 0
        leader[1].stop()  # releases the Lease: the other takes over and keeps things in step
        assert wait_for(lambda: other[1].is_leader, 10)
        _label(kube, ns, "enforce")
        _eventually(
            lambda: _assert_spec(_filters(kube, ns), render(ns, "enforce")["objects"][0]["spec"])
        )
        assert other[0].counters.applied >= 1
    finally:
        stop.set()
        for ctl, elector, t, api in pairs:
            ctl.wake.set()
            elector.stop()
            t.join(10)
            ctl.stop_watches()
            api.close()
