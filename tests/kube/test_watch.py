"""Watch-with-relist against the real API server: deltas, relists (410, restart), selectors."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from meshward.kube import Event, EventType, Watcher
from tests.support.apiserver import KubeCluster

pytestmark = pytest.mark.integration


class Recorder:
    """Runs a Watcher in a thread and hands its events to the test one by one."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.events: queue.Queue[Event] = queue.Queue()
        watcher.start(self.events.put)

    def next(
        self, want: EventType | None = None, name: str | None = None, timeout: float = 10.0
    ) -> Event:
        """The next event matching `want`/`name` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {want} {name or ''} event within {timeout} s")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if want is not None and ev.type != want:
                continue
            if name is not None and (ev.key is None or ev.key[1] != name):
                continue
            return ev


@pytest.fixture
def core(kube_cluster: KubeCluster) -> Iterator[client.CoreV1Api]:
    with kube_cluster.api_client() as api:
        yield client.CoreV1Api(api)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    made: list[Watcher] = []
    yield made
    for w in made:
        w.stop()
        w.join(5)


def _watch(watchers: list[Watcher], fn: object, *args: object, **kw: object) -> Recorder:
    w = Watcher(fn, *args, timeout_seconds=30, backoff_initial=0.2, backoff_max=1.0, **kw)  # type: ignore[arg-type]
    watchers.append(w)
    return Recorder(w)


def test_sync_then_add_modify_delete(
    core: client.CoreV1Api, kube_namespace: str, watchers: list[Watcher]
) -> None:
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "before"}})
    rec = _watch(watchers, core.list_namespaced_config_map, kube_namespace)
    sync = rec.next(EventType.SYNC)
    assert (kube_namespace, "before") in (sync.objects or {})
    assert sync.objects[(kube_namespace, "before")]["kind"] == "ConfigMap"  # type: ignore[index]
    assert rec.watcher.synced.is_set()

    core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "c1"}, "data": {"k": "1"}}
    )
    assert rec.next(EventType.ADDED, "c1").object["data"] == {"k": "1"}  # type: ignore[index]
    core.patch_namespaced_config_map("c1", kube_namespace, {"data": {"k": "2"}})
    assert rec.next(EventType.MODIFIED, "c1").object["data"] == {"k": "2"}  # type: ignore[index]
    core.delete_namespaced_config_map("c1", kube_namespace)
    assert rec.next(EventType.DELETED, "c1").key == (kube_namespace, "c1")
    assert rec.watcher.stats.malformed == 0


def test_relist_after_410_gone(
    kube_cluster: KubeCluster, core: client.CoreV1Api, kube_namespace: str, watchers: list[Watcher]
) -> None:
    """An expired resourceVersion (etcd compacted; podtemplates skip the watch cache) relists."""
    assert kube_cluster.GONE_RESOURCE == "podtemplates"
    tpl = {
        "metadata": {"name": "t1"},
        "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}},
    }
    core.create_namespaced_pod_template(kube_namespace, tpl)
    rec = _watch(watchers, core.list_namespaced_pod_template, kube_namespace)
    rec.next(EventType.SYNC)
    w = rec.watcher
    # etcd compacts every 2 s, so version "1" is gone a few seconds after the server started.
    deadline = time.monotonic() + 15
    while w.stats.gone == 0 and time.monotonic() < deadline:
        w.reconnect(resource_version="1")
        time.sleep(0.3)
    assert w.stats.gone >= 1, w.stats
    sync = rec.next(EventType.SYNC)
    assert set(sync.objects or {}) == {(kube_namespace, "t1")}
    core.delete_namespaced_pod_template("t1", kube_namespace)
    rec.next(EventType.DELETED, "t1")


def test_relist_after_apiserver_restart(
    kube_cluster: KubeCluster, core: client.CoreV1Api, kube_namespace: str, watchers: list[Watcher]
) -> None:
    rec = _watch(watchers, core.list_namespaced_config_map, kube_namespace)
    rec.next(EventType.SYNC)
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "kept"}})
    rec.next(EventType.ADDED, "kept")
    kube_cluster.restart()
    sync = rec.next(EventType.SYNC, timeout=20)  # after the backoff the watcher relisted
    assert (kube_namespace, "kept") in (sync.objects or {})
    assert rec.watcher.stats.errors >= 1 and rec.watcher.stats.last_error
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "after"}})
    rec.next(EventType.ADDED, "after")


def test_field_selector_on_node_name(
    core: client.CoreV1Api, kube_namespace: str, watchers: list[Watcher]
) -> None:
    """The node agent's watch: only pods bound to its node (they stay Pending: no kubelet)."""

    def pod(name: str, node: str) -> dict[str, object]:
        return {
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
        }

    core.create_namespaced_pod(kube_namespace, pod("a1", "node-a"))
    core.create_namespaced_pod(kube_namespace, pod("b1", "node-b"))
    rec = _watch(
        watchers, core.list_namespaced_pod, kube_namespace, field_selector="spec.nodeName=node-a"
    )
    assert set(rec.next(EventType.SYNC).objects or {}) == {(kube_namespace, "a1")}
    core.create_namespaced_pod(kube_namespace, pod("b2", "node-b"))
    core.create_namespaced_pod(kube_namespace, pod("a2", "node-a"))
    ev = rec.next()
    assert (ev.type, ev.key) == (EventType.ADDED, (kube_namespace, "a2"))
    # A kubelet's status update is a MODIFIED event like any other.
    core.patch_namespaced_pod_status(
        "a2",
        kube_namespace,
        {"status": {"phase": "Running", "podIP": "10.1.0.7", "hostIP": "10.0.0.2"}},
    )
    ev = rec.next(EventType.MODIFIED, "a2")
    assert ev.object["status"]["podIP"] == "10.1.0.7"  # type: ignore[index]


def test_custom_objects(
    kube_cluster: KubeCluster, kube_namespace: str, watchers: list[Watcher]
) -> None:
    group, plural = "test.meshward.io", f"widgets{uuid.uuid4().hex[:6]}"
    ext = client.ApiextensionsV1Api(kube_cluster.api_client())
    ext.create_custom_resource_definition(
        {
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            }
                        },
                    }
                ],
            },
        }
    )
    try:
        custom = client.CustomObjectsApi(kube_cluster.api_client())
        deadline = time.monotonic() + 15
        while True:  # the CRD's endpoint appears once it is Established
            try:
                custom.list_namespaced_custom_object(group, "v1", kube_namespace, plural)
                break
            except client.ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        rec = _watch(
            watchers, custom.list_namespaced_custom_object, group, "v1", kube_namespace, plural
        )
        assert rec.next(EventType.SYNC).objects == {}
        custom.create_namespaced_custom_object(
            group,
            "v1",
            kube_namespace,
            plural,
            {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": "w1"},
                "spec": {"size": 3},
            },
        )
        ev = rec.next(EventType.ADDED, "w1")
        assert ev.object["spec"] == {"size": 3}  # type: ignore[index]
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")


def test_stop_from_another_thread_is_prompt(core: client.CoreV1Api, kube_namespace: str) -> None:
    w = Watcher(core.list_namespaced_config_map, kube_namespace, timeout_seconds=300)
    rec = Recorder(w)
    rec.next(EventType.SYNC)
    time.sleep(0.2)  # now blocked reading an idle stream
    t0 = time.monotonic()
    w.stop()
    w.join(5)
    assert w._thread is not None and not w._thread.is_alive()
    assert time.monotonic() - t0 < 2
