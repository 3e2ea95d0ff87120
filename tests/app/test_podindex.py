"""meshward.app.podindex fed watch events directly (the watch itself runs on the real API server
in tests/app/serve/test_node_scope.py): IP ownership rules, node placement, SYNC replacing the
view, the size bound, and broken pod objects (fuzzed) never raising."""

from __future__ import annotations

import sys
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.app.podindex import PodIndex
from meshward.kube.watch import Event, EventType


def _pod(
    name: str,
    node: str = "n1",
    ip: str = "",
    app: str = "",
    phase: str = "Running",
    host: bool = False,
    ns: str = "shop",
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{name}",
            "labels": {"app": app or name},
        },
        "spec": {"nodeName": node, "hostNetwork": host, "serviceAccountName": "sa"},
        "status": {"phase": phase, "podIP": ip},
    }


def _ev(kind: EventType, obj: dict[str, Any]) -> Event:
    return Event(kind, object=obj)


def _sync(*pods: dict[str, Any]) -> Event:
    return Event(
        EventType.SYNC,
        objects={(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods},
    )


def test_ip_is_answered_only_for_one_live_pod_network_pod() -> None:
    idx = PodIndex()
    idx.apply(
        _sync(
            _pod("a", ip="10.0.0.1", app="api"),
            _pod("h", ip="10.9.0.1", host=True),  # hostNetwork: the node's IP
            _pod("done", ip="10.0.0.2", phase="Succeeded"),  # released its IP
            _pod("x", ip="10.0.0.3"),
            _pod("y", ip="10.0.0.3"),  # a recycled IP held twice: nobody's for now
            _pod("v6", ip="fd00::0:1"),
        )
    )
    assert idx.by_ip("10.0.0.1").who.name == "a"  # type: ignore[union-attr]
    assert idx.by_ip("::ffff:10.0.0.1").who.name == "a"  # type: ignore[union-attr]
    assert idx.by_ip("fd00::1").who.name == "v6"  # type: ignore[union-attr]
    for ip in ("10.9.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.99", "junk"):
        assert idx.by_ip(ip) is None, ip
    idx.apply(_ev(EventType.DELETED, _pod("y", ip="10.0.0.3")))
    assert idx.by_ip("10.0.0.3").who.name == "x"  # type: ignore[union-attr]
    assert idx.get("shop", "a").uid == "uid-a"  # type: ignore[union-attr]


def test_placement_follows_moves_phases_and_sync() -> None:
    idx = PodIndex()
    idx.apply(_sync(_pod("api-1", node="n1", app="api"), _pod("api-2", node="n2", app="api")))
    assert idx.on_node("n1", "shop", "api") and idx.on_node("n2", "shop", "api")
    idx.apply(_ev(EventType.MODIFIED, _pod("api-1", node="n1", app="api", phase="Failed")))
    assert not idx.on_node("n1", "shop", "api")
    idx.apply(_ev(EventType.ADDED, _pod("api-3", node="n1", app="api", ip="10.0.0.7")))
    assert idx.on_node("n1", "shop", "api") and idx.by_ip("10.0.0.7") is not None
    idx.apply(_sync(_pod("api-2", node="n2", app="api")))  # a relist: the rest vanished
    assert not idx.on_node("n1", "shop", "api") and idx.by_ip("10.0.0.7") is None
    assert len(idx) == 1


def test_workload_binding_follows_owner_accounts_phases_and_sync() -> None:
    """runs_under: a live pod of the workload (owner-reference naming) under the account."""
    idx = PodIndex()
    assert not idx.runs_under("shop", "api", "sa")  # nothing synced: nothing is vouched for
    rs = _pod("web-5f7d-x2")
    rs["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "web-5f7d"}]
    rs["metadata"]["labels"] = {"app": "frontend", "pod-template-hash": "5f7d"}
    idx.apply(_sync(_pod("api-1", app="api"), rs))
    assert idx.runs_under("shop", "api", "sa") and idx.runs_under("shop", "web", "sa")
    assert not idx.runs_under("shop", "frontend", "sa")  # the label is not the workload
    assert not idx.runs_under("shop", "api", "other") and not idx.runs_under("bank", "api", "sa")
    idx.apply(_ev(EventType.MODIFIED, _pod("api-1", app="api", phase="Succeeded")))
    assert not idx.runs_under("shop", "api", "sa")
    idx.apply(_ev(EventType.ADDED, _pod("api-2", app="api")))
    assert idx.runs_under("shop", "api", "sa")
    idx.apply(_ev(EventType.DELETED, _pod("api-2", app="api")))
    assert not idx.runs_under("shop", "api", "sa")
    idx.apply(_sync(_pod("api-3", app="api")))  # a relist: web vanished
    assert idx.runs_under("shop", "api", "sa") and not idx.runs_under("shop", "web", "sa")


def test_size_is_bounded_and_overflow_counted() -> None:
    idx = PodIndex(max_pods=3)
    idx.apply(_sync(*(_pod(f"p{i}", ip=f"10.0.1.{i}") for i in range(5))))
    assert len(idx) == 3 and idx.overflow == 2
    idx.apply(_ev(EventType.ADDED, _pod("late")))
    assert len(idx) == 3 and idx.overflow == 3


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(EventType)), JSONISH), max_size=8))
def test_broken_pod_objects_never_raise(events: list[tuple[EventType, Any]]) -> None:
    idx = PodIndex()
    for kind, obj in events:
        if kind == EventType.SYNC:
            idx.apply(Event(kind, objects={("a", "b"): obj} if isinstance(obj, dict) else {}))
        else:
            idx.apply(Event(kind, object=obj if isinstance(obj, dict) else {"metadata": obj}))
        idx.by_ip("10.0.0.1")
        idx.on_node("n1", "shop", "api")


def test_node_scope_needs_a_synced_index_and_the_token_s_own_pod() -> None:
    from meshward.app.auth import Principal
    from meshward.app.nodescope import NodeScope, ScopeError
    from meshward.kube.review import POD_NAME_EXTRA, POD_UID_EXTRA

    def tap(uid: str = "uid-tap", sa: str = "sa") -> Principal:
        extra = ((POD_NAME_EXTRA, ("tap",)), (POD_UID_EXTRA, (uid,)))
        return Principal(f"system:serviceaccount:shop:{sa}", extra=extra)

    def status(principal: Principal | None) -> int | str:
        try:
            return scope.node_of(principal)
        except ScopeError as exc:
            return exc.status

    idx = PodIndex()
    scope = NodeScope(idx)
    assert status(tap()) == 503  # not synced: retry later, never a guess
    idx.apply(_sync(_pod("tap", node="n1")))
    idx.synced.set()
    assert status(tap()) == "n1"
    assert status(tap(uid="uid-of-an-older-pod")) == 403  # same name, another pod
    assert status(tap(sa="other")) == 403  # the pod runs as another account
    assert status(Principal("system:serviceaccount:shop:sa")) == 403  # not pod-bound
    assert status(Principal("alice")) == 403
    assert status(None) == 403


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["n1", "n2"]),
            st.sampled_from(["api", "cart"]),
            st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", ""]),
            st.sampled_from(["Running", "Pending", "Succeeded"]),
            st.booleans(),
        ),
        max_size=6,
    ),
    st.sampled_from(["api", "cart", ""]),
    st.sampled_from(["10.0.0.1", "10.0.0.2", "127.0.0.1", "", "not-an-ip"]),
)
def test_node_scope_accepts_exactly_destinations_on_the_node(
    layout: list[tuple[str, str, str, str, bool]], workload: str, ip: str
) -> None:
    """Against a plain oracle over random pod layouts: an observation from node n1's tap is
    accepted iff its destination is a live pod on n1 (by pod IP held by exactly one live
    pod-network pod, else by namespace/workload)."""
    from meshward.app.nodescope import NodeScope
    from meshward.core.observation import Identity, Observation

    pods = [
        _pod(f"p{i}", node=node, app=app, ip=pip, phase=phase, host=host)
        for i, (node, app, pip, phase, host) in enumerate(layout)
    ]
    idx = PodIndex()
    idx.apply(_sync(*pods))
    obs = Observation(seen_by="node-tap", destination=Identity("shop", workload, ip=ip))
    live = [p for p in layout if p[3] != "Succeeded"]
    if ip in ("10.0.0.1", "10.0.0.2"):
        holders = [p for p in live if p[2] == ip and not p[4]]
        want = len(holders) == 1 and holders[0][0] == "n1" and workload in ("", holders[0][1])
    else:
        want = bool(workload) and any(p[0] == "n1" and p[1] == workload for p in live)
    assert NodeScope(idx).allows(obs, "n1") == want


def test_node_scope_takes_control_plane_traffic_by_its_client() -> None:
    """Control-plane connections are judged on the client's node: a report or an alert speaks
    for its source pod (istiod runs elsewhere), never for some other node's client."""
    from meshward.app.nodescope import NodeScope
    from meshward.core.controlplane import CONNECTION, REPORT_KEY
    from meshward.core.observation import Identity, Observation, Threat
    from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS

    idx = PodIndex()
    idx.apply(
        _sync(
            _pod("web-1", node="n1", app="web", ip="10.0.0.2"),
            _pod("istiod-1", node="n2", app="istiod", ip="10.0.0.9", ns="istio-system"),
        )
    )
    scope = NodeScope(idx)
    istiod = Identity("istio-system", "istiod", ip="10.0.0.9", port=15012)
    web = Identity("shop", "web", ip="10.0.0.2", port=40000)
    report = Observation(
        seen_by="node-tap",
        source=web,
        destination=istiod,
        protocol="tcp",
        extra={REPORT_KEY: CONNECTION},
    )
    alert = Observation(
        seen_by="node-tap",
        source=web,
        destination=istiod,
        protocol="tcp",
        threats=[Threat(MESH_CONTROL_PLANE_ACCESS, "network", "x")],
    )
    for obs in (report, alert):
        assert scope.allows(obs, "n1") and not scope.allows(obs, "n2")
    # anything else still needs its destination on the node
    plain = Observation(seen_by="node-tap", source=web, destination=istiod, protocol="tcp")
    assert not scope.allows(plain, "n1") and scope.allows(plain, "n2")


def test_a_pod_being_updated_is_never_seen_gone() -> None:
    """An update is a remove then an add: a reader on another thread (serve's loop scoping a
    node tap's batch) must see the pod before or after it, never without it."""
    idx = PodIndex()
    api = _pod("api-1", node="n1", app="api", ip="10.0.0.5")
    idx.apply(_ev(EventType.ADDED, api))
    stop = threading.Event()
    gone = 0

    def read() -> None:
        nonlocal gone
        while not stop.is_set():
            if not idx.on_node("n1", "shop", "api") or idx.by_ip("10.0.0.5") is None:
                gone += 1

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20_000):
            idx.apply(_ev(EventType.MODIFIED, api))
    finally:
        stop.set()
        reader.join()
        sys.setswitchinterval(before)
    assert gone == 0
