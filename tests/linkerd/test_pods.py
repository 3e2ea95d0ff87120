"""meshward.linkerd.pods: which pods are meshed and who they are, from Pod objects alone
(including Linkerd's native sidecar, which the 1.20 test server's Pod schema cannot hold)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.observation import Identity
from meshward.linkerd.pods import capturable, has_proxy, identity, is_meshed, workload_of


def pod(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "metadata": {
            "name": "web-7d4b9c-x2k4p",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9c", "controller": True}],
        },
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": "web",
            "containers": [{"name": "app"}, {"name": "linkerd-proxy"}],
        },
        "status": {"phase": "Running", "podIP": "10.1.0.7"},
    }
    for path, value in over.items():
        section, key = path.split("__")
        base[section][key] = value
    return base


def test_classic_sidecar_is_meshed() -> None:
    assert has_proxy(pod()) and is_meshed(pod())


def test_native_sidecar_init_container() -> None:
    native = pod(
        spec__containers=[{"name": "app"}],
        spec__initContainers=[
            {"name": "linkerd-init"},
            {"name": "linkerd-proxy", "restartPolicy": "Always"},
        ],
    )
    assert has_proxy(native) and is_meshed(native)
    plain_init = pod(
        spec__containers=[{"name": "app"}], spec__initContainers=[{"name": "linkerd-proxy"}]
    )
    assert not has_proxy(plain_init)  # an init container that exits is no proxy


def test_annotations_on_pod_and_namespace() -> None:
    bare = pod(spec__containers=[{"name": "app"}])
    assert not is_meshed(bare)
    ns = {"metadata": {"name": "shop", "annotations": {"linkerd.io/inject": "enabled"}}}
    assert is_meshed(bare, ns)
    opted_out = pod(metadata__annotations={"linkerd.io/inject": "disabled"})
    assert not is_meshed(opted_out, ns)
    assert is_meshed(
        pod(
            spec__containers=[{"name": "app"}],
            metadata__annotations={"linkerd.io/inject": "enabled"},
        )
    )


@pytest.mark.parametrize(
    ("owners", "labels", "want"),
    [
        ([{"kind": "ReplicaSet", "name": "web-7d4b9c"}], {"pod-template-hash": "7d4b9c"}, "web"),
        ([{"kind": "ReplicaSet", "name": "web-7d4b9c"}], {}, "web-7d4b9c"),
        ([{"kind": "StatefulSet", "name": "db"}], {}, "db"),
        ([{"kind": "DaemonSet", "name": "agent"}], {}, "agent"),
        ([], {"app.kubernetes.io/name": "api", "app": "x"}, "api"),
        ([], {"app": "x"}, "x"),
        ([], {}, "web-7d4b9c-x2k4p"),
        ([{"kind": "ReplicaSet", "name": "rs", "controller": False}], {"app": "y"}, "y"),
    ],
)
def test_workload(owners: list[dict[str, Any]], labels: dict[str, str], want: str) -> None:
    assert workload_of(pod(metadata__ownerReferences=owners, metadata__labels=labels)) == want


def test_identity_and_capturable() -> None:
    who = identity(pod())
    assert (who.namespace, who.workload, who.service_account, who.ip, who.node) == (
        "shop",
        "web",
        "web",
        "10.1.0.7",
        "node-1",
    )
    assert capturable(pod())
    assert not capturable(pod(status__phase="Pending"))
    assert not capturable(pod(status__podIP=""))
    assert not capturable(pod(metadata__deletionTimestamp="2026-12-01T00:00:00Z"))
    assert identity(pod(spec__serviceAccountName=None)).service_account == "default"


def test_principal_is_the_linkerd_identity_of_the_service_account() -> None:
    """The destination is named as linkerd-proxy names the same pod when it calls out."""
    who = identity(pod(spec__serviceAccountName="payments-sa"))
    want = "payments-sa.shop.serviceaccount.identity.linkerd.cluster.local"
    assert who.principal() == want
    assert Identity.parse(want) == Identity("shop", "payments-sa", want)
    assert who.principal("corp.example").endswith(".identity.linkerd.corp.example")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=20,
)


# No per-example deadline: hypothesis's default (200 ms of wall time for one example) is a
# timing assertion, and the checks take microseconds; on two cores shared with other test runs
# a descheduled example overran it once. What is checked (no input raises, the same examples)
# is unchanged; how fast the discovery code is belongs to bench/nodetap.py.
@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["metadata", "spec", "status", "x"]), _json, max_size=4))
def test_broken_objects_never_raise(obj: dict[str, Any]) -> None:
    identity(obj)
    is_meshed(obj, obj)
    capturable(obj)
