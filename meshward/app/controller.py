"""`meshward controller`: keeps every Istio namespace's meshward filters in step with its label.

For each namespace with Istio sidecar injection (`istio-injection=enabled`, or an `istio.io/rev`
label without `istio-injection=disabled`), the desired objects are what `meshward istio render`
gives for the namespace's `meshward.io/mode` label (`learn` when absent; `off`: none). The
controller applies them with server-side apply under its own field manager and prunes the
objects it owns (label `app.kubernetes.io/managed-by=meshward`) that are no longer desired:
mode off, injection removed, namespace deleted. A managed object someone edits or deletes is put
back on the next pass (its watch wakes the loop).

Only the leader of the `meshward-controller` Lease writes, so replicas do not fight. Watches
relist when they expire (meshward.kube.watch); failed writes are retried with a backoff. Each
change is reported as an Event on the Namespace and counted in the metrics.

Desired state is a pure function of the namespaces (`desired`), so it is tested without a
cluster; `Controller` is the I/O around it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshward.core.labels import MANAGED_SELECTOR, MODE_LABEL
from meshward.core.log import event
from meshward.core.modes import DEFAULT_MODE, MODES
from meshward.istio.envoyfilter import render

if TYPE_CHECKING:
    from meshward.app.meshguard import MeshGuard
    from meshward.core.meshguard import Finding

log = logging.getLogger("meshward.controller")

FIELD_MANAGER = "meshward-controller"
KINDS: dict[str, tuple[str, str, str]] = {  # kind -> (group, version, plural)
    "EnvoyFilter": ("networking.istio.io", "v1alpha3", "envoyfilters"),
    # the tap's stream window on the mesh's cluster to meshward (istio/envoyfilter.py)
    "DestinationRule": ("networking.istio.io", "v1", "destinationrules"),
    "AuthorizationPolicy": ("security.istio.io", "v1", "authorizationpolicies"),
}
Key = tuple[str, str, str]  # kind, namespace, name


@dataclass(frozen=True)
class ControllerConfig:
    service: str = "meshward.meshward.svc.cluster.local"
    style: str = "envoyfilter"
    namespace: str = "meshward"  # where the Lease lives
    lease_name: str = "meshward-controller"
    identity: str = ""
    resync: float = 60.0  # a full pass at least this often, events or not
    backoff_max: float = 30.0


def injected(labels: Mapping[str, str]) -> bool:
    """Does Istio inject sidecars into this namespace's pods?"""
    if labels.get("istio-injection") == "disabled":
        return False
    return labels.get("istio-injection") == "enabled" or "istio.io/rev" in labels


def mode_of(labels: Mapping[str, str]) -> str | None:
    """The namespace's mode, or None for a label value that is no mode (left as it is)."""
    mode = labels.get(MODE_LABEL, DEFAULT_MODE)
    return mode if mode in MODES else None


def desired(
    namespaces: Mapping[str, Mapping[str, str]], config: ControllerConfig
) -> tuple[dict[Key, dict[str, Any]], set[str]]:
    """The objects every namespace should have, and the namespaces whose mode label is
    invalid (their objects are left untouched and a warning is raised)."""
    out: dict[Key, dict[str, Any]] = {}
    invalid: set[str] = set()
    for ns, labels in namespaces.items():
        if not injected(labels):
            continue
        mode = mode_of(labels)
        if mode is None:
            invalid.add(ns)
            continue
        if mode == "off":
            continue
        for obj in render(ns, mode, style=config.style, service=config.service)["objects"]:
            out[(obj["kind"], ns, obj["metadata"]["name"])] = obj
    return out, invalid


def same(want: Mapping[str, Any], have: Mapping[str, Any] | None) -> bool:
    """Is the live object already what we would apply (spec and our labels)?"""
    if have is None:
        return False
    labels = have.get("metadata", {}).get("labels") or {}
    want_labels = want["metadata"].get("labels", {})
    return have.get("spec") == want.get("spec") and all(
        labels.get(k) == v for k, v in want_labels.items()
    )


@dataclass
class Counters:
    passes: int = 0
    applied: int = 0
    pruned: int = 0
    errors: int = 0
    events: int = 0


@dataclass
class Controller:
    """The reconcile loop over a Kubernetes API client (`kubernetes.client.ApiClient`)."""

    api_client: Any
    config: ControllerConfig = field(default_factory=ControllerConfig)
    clock: Callable[[], float] = time.monotonic
    guard: MeshGuard | None = None  # the configuration guard (meshward.app.meshguard)

    def __post_init__(self) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.counters = Counters()
        self.namespaces: dict[str, dict[str, str]] = {}
        self.live: dict[Key, dict[str, Any]] = {}
        self.wake = threading.Event()
        self._lock = threading.Lock()
        self._watchers: list[Any] = []
        self._failures = 0
        self._warned: dict[str, str] = {}
        self.last_success = 0.0  # Unix time of the last pass that succeeded (0: none yet)
        self._last_live: dict[Key, dict[str, Any]] = {}  # desired objects live at the last pass
        self._owned: frozenset[Key] = frozenset()  # what the last pass wanted

    # ---- the views the watches keep
    def _on_namespace(self, ev: Any) -> None:
        with self._lock:
            if ev.type == "SYNC":
                self.namespaces = {  # a namespace being deleted takes no new objects
                    name: dict(o.get("metadata", {}).get("labels") or {})
                    for (_, name), o in (ev.objects or {}).items()
                    if not o.get("metadata", {}).get("deletionTimestamp")
                }
            elif ev.object is not None:
                meta = ev.object.get("metadata", {})
                if ev.type == "DELETED" or meta.get("deletionTimestamp"):
                    self.namespaces.pop(meta.get("name", ""), None)
                else:
                    self.namespaces[meta["name"]] = dict(meta.get("labels") or {})
        if self.guard is not None:
            try:
                self.guard.on_namespace(ev)
            except Exception:  # the guard never stops the filters from following the labels
                log.exception("mesh guard failed on a namespace %s event", ev.type)
        self.wake.set()

    def _on_managed(self, kind: str) -> Callable[[Any], None]:
        def handle(ev: Any) -> None:
            with self._lock:
                if ev.type == "SYNC":
                    self.live = {k: v for k, v in self.live.items() if k[0] != kind}
                    for (ns, name), o in (ev.objects or {}).items():
                        self.live[(kind, ns, name)] = o
                elif ev.object is not None:
                    meta = ev.object.get("metadata", {})
                    key = (kind, meta.get("namespace", ""), meta.get("name", ""))
                    if ev.type == "DELETED":
                        self.live.pop(key, None)
                    else:
                        self.live[key] = ev.object
            self.wake.set()

        return handle

    def start_watches(self, kinds: tuple[str, ...] = ("EnvoyFilter", "DestinationRule")) -> None:
        from meshward.kube.watch import Watcher

        handler: Callable[[Any], None] = self._on_namespace
        watchers = [(Watcher(self.core.list_namespace, name="namespaces"), handler)]
        for kind in kinds:
            group, version, plural = KINDS[kind]
            w = Watcher(
                self.custom.list_cluster_custom_object,
                group,
                version,
                plural,
                label_selector=MANAGED_SELECTOR,
                name=plural,
            )
            watchers.append((w, self._on_managed(kind)))
        for w, handle in watchers:
            w.start(handle)
            self._watchers.append(w)
        if self.guard is not None:  # its own watches: a mesh not installed must not stop us
            self.guard.owned = self.owns
            self.guard.start()

    def watched(self) -> tuple[int, dict[str, int]]:
        """How many namespaces, and managed objects by kind, the watches hold now."""
        with self._lock:
            kinds: dict[str, int] = {}
            for kind, _, _ in self.live:
                kinds[kind] = kinds.get(kind, 0) + 1
            return len(self.namespaces), kinds

    def synced(self) -> bool:
        return all(w.synced.is_set() for w in self._watchers)

    def stop_watches(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        for w in self._watchers:
            w.stop()
        for w in self._watchers:
            w.join(5)
        self._watchers.clear()

    # ---- one pass
    def reconcile(self) -> None:
        """Apply what is missing or changed, prune what is no longer desired."""
        with self._lock:
            namespaces = {k: dict(v) for k, v in self.namespaces.items()}
            live = dict(self.live)
        want, invalid = desired(namespaces, self.config)
        self._owned = frozenset(want)
        self.counters.passes += 1
        for ns in invalid:
            value = namespaces[ns].get(MODE_LABEL, "")
            if self._warned.get(ns) != value:
                self._warned[ns] = value
                self._event(
                    ns,
                    "Warning",
                    "InvalidMode",
                    f"{MODE_LABEL}={value!r} is not a mode (learn, monitor, enforce, "
                    "off): meshward's filters there are left as they are",
                )
        for key, obj in want.items():
            have = live.get(key)
            if not same(obj, have):
                tampered = self._tampered(key, have, obj)
                uid = self._apply(key, obj)
                if tampered is not None and self.guard is not None:
                    self.guard.report_restored(tampered, uid)
        self._last_live = {k: live[k] for k in want if k in live}
        keep = set(want) | {k for k in live if k[1] in invalid}
        for key in live:
            if key not in keep:
                self._delete(key)

    def owns(self, group: str, kind: str, namespace: str, name: str) -> bool:
        """Is this object one the controller applies (the mesh guard leaves it to reconcile)?"""
        return KINDS.get(kind, ("",))[0] == group and (kind, namespace, name) in self._owned

    def _tampered(
        self, key: Key, have: dict[str, Any] | None, want: dict[str, Any]
    ) -> Finding | None:
        """Someone else's edit or deletion of a managed object, reported before it is put back
        (None: no guard, or no tampering). A guard failure never stops the pass."""
        if self.guard is None:
            return None
        try:
            found = self.guard.tampered(key[0], have, self._last_live.get(key), want, FIELD_MANAGER)
            if found is not None:  # with the tampered state's version: joins the audit log
                rv = str(((have or {}).get("metadata") or {}).get("resourceVersion") or "")
                self.guard.report_tampered(found, rv)
            return found
        except Exception:
            log.exception("mesh guard failed on %s %s/%s", *key)
            return None

    def _apply(self, key: Key, obj: dict[str, Any]) -> str:
        """Server-side apply; returns the object's uid."""
        kind, ns, name = key
        group, version, plural = KINDS[kind]
        answer = self.custom.patch_namespaced_custom_object(
            group,
            version,
            ns,
            plural,
            name,
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        self.counters.applied += 1
        mode = obj["metadata"]["labels"].get(MODE_LABEL, "")
        event(log, "applied", kind=kind, namespace=ns, name=name, mode=mode)
        self._event(ns, "Normal", "FiltersApplied", f"{kind} {name} applied for mode {mode}")
        meta = answer.get("metadata") if isinstance(answer, dict) else None
        return str((meta or {}).get("uid") or "")

    def _delete(self, key: Key) -> None:
        from kubernetes.client.exceptions import ApiException

        kind, ns, name = key
        group, version, plural = KINDS[kind]
        try:
            self.custom.delete_namespaced_custom_object(group, version, ns, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.counters.pruned += 1
        event(log, "pruned", kind=kind, namespace=ns, name=name)
        if ns in self.namespaces:
            self._event(ns, "Normal", "FiltersPruned", f"{kind} {name} removed")

    def _event(self, namespace: str, kind: str, reason: str, message: str) -> None:
        """An Event on the Namespace (best effort: reporting never stops reconciling)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Any = {
            "metadata": {"generateName": "meshward-", "namespace": namespace},
            # the API wants an event's namespace to be its object's: kept in the namespace itself
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Namespace",
                "name": namespace,
                "namespace": namespace,
            },
            "type": kind,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": FIELD_MANAGER,
        }
        try:
            self.core.create_namespaced_event(namespace, body)
            self.counters.events += 1
        except Exception as exc:
            event(
                log,
                "event not recorded",
                logging.WARNING,
                namespace=namespace,
                reason=reason,
                error=str(exc)[:200],
            )

    # ---- the loop
    def run(self, stop: threading.Event, leading: threading.Event | None = None) -> None:
        """Reconcile while `leading` is set (always, when None) until `stop`."""
        from meshward.kube.errors import describe

        while not stop.is_set():
            self.wake.wait(self.config.resync)
            self.wake.clear()
            if stop.is_set():
                break
            if (leading is not None and not leading.is_set()) or not self.synced():
                continue
            try:
                self.reconcile()
                self._failures = 0
                self.last_success = time.time()
            except Exception as exc:
                self.counters.errors += 1
                self._failures += 1
                delay = min(self.config.backoff_max, 0.5 * 2 ** min(self._failures, 10))
                event(
                    log,
                    "reconcile failed",
                    logging.ERROR,
                    error=describe(exc)[:300],
                    retry_in=round(delay, 1),
                )
                stop.wait(delay)
                self.wake.set()
