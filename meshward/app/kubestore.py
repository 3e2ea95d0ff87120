"""The cluster store: several `meshward serve` replicas share what they learned through
`Allowlist` custom resources (allowlists.meshward.io/v1alpha1), and modes come from Namespace
labels.

One object per destination service, in that service's namespace (name: the service name; other
destinations get a hashed DNS-safe name in meshward's own namespace). The rules live in `spec`
(`spec.rules`, `spec.removed`: tombstones a person wrote), the counters in `status` (per replica
id: a second write, to the status subresource). A save is get, merge (`core.allowlist_merge`:
a join, so retries and repeats are harmless), replace with the resourceVersion, retried on 409
with jittered backoff, created on 404. Writes are capped per flush (`max_writes` objects); the
rest wait for the next flush, newest document first-come first-served, counted in `deferred`.

Size: etcd refuses a request over 1.5 MiB. A 1,000-rule profile is ~0.5 MB as an object (see
docs/store.md); one object per destination is kept (a destination's merge stays one atomic
write, which continuation objects would lose), and an object over `max_object_bytes` drops
its last rules (by path) until it fits, counted in `trimmed`.

Replica ids are pod names, so rollouts leave ids behind: with `live_replicas` (the app lists
the serve pods, which its role may), the counters of ids that no longer exist are folded into
one `retired` entry on the next write, so the object does not grow with every rollout.

A watch on the objects delivers other replicas' and people's changes: the app drains
`changes()` and hands each document to the engine, which *replaces* its profile of that
destination with it (the counts are the sums over replicas; a replica's own counter is what its
engine added to what it was last handed, so nothing is counted twice). Alerts are not kept in
etcd: they go to an injected store (the SQLite one of this replica).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from meshward.app.alertevents import AlertEvents
from meshward.app.install import GROUP
from meshward.app.store import AlertsIn, AlertStore, StoreError
from meshward.core import modes as core_modes
from meshward.core.allowlist import Limits
from meshward.core.allowlist_merge import (
    Shared,
    compact,
    contribution,
    from_object,
    merge,
    merge_counted,
    profile_doc,
    retire,
    to_object,
)
from meshward.core.labels import MANAGED_BY, MODE_LABEL
from meshward.core.log import event
from meshward.core.names import is_kubernetes_name
from meshward.kube.errors import (
    KubeError,
    KubeForbidden,
    KubeUnavailable,
    describe,
    from_api_exception,
)
from meshward.kube.watch import Event, EventType, Watcher, object_key, wait_for

log = logging.getLogger("meshward.app.kubestore")

VERSION = "v1alpha1"
PLURAL = "allowlists"
KIND = "Allowlist"
RESOURCE = f"{PLURAL}.{GROUP}"
COMPONENT = "meshward-serve"
# etcd's default request limit is 1.5 MiB; leave room for metadata and managedFields
MAX_OBJECT_BYTES = 1_000_000
TIMEOUT = (5, 30)  # connect, read seconds of one API call: an outage must not hang a flush


@dataclass
class Change:
    """Another writer changed one destination: its new state (None: the object was deleted),
    the state this replica's engine was handed before, and the new state as a profile document."""

    destination: str
    new: Shared | None
    old: Shared | None
    doc: dict[str, Any] | None
    unwritten: bool = False  # this replica still has learning of it queued for a write


class KubeStoreUnavailable(StoreError):
    """The API server cannot be reached: the caller decides readiness (retry, not ready)."""


@dataclass
class KubeStoreStats:
    """Counters for metrics and tests."""

    writes: int = 0  # API writes (spec, status and creates)
    objects_written: int = 0
    unchanged: int = 0  # saves that found nothing new to write
    conflicts: int = 0  # 409s retried
    deferred: int = 0  # objects left for the next flush by the write cap
    refused: int = 0  # rules a bound refused in a merge
    trimmed: int = 0  # rules dropped to keep an object under max_object_bytes
    bad_objects: int = 0  # hand-edited objects with parts that do not parse
    errors: int = 0  # saves of one object that failed (retried by a later flush)
    events: int = 0  # Kubernetes Events recorded
    changes: int = 0  # other writers' changes seen by the watch


def object_ref(destination: str, fallback_namespace: str) -> tuple[str, str]:
    """(namespace, name) of a destination's object: deterministic and DNS-safe.

    `ns/svc` with valid names is `svc` in `ns`; anything else gets a sanitized name plus a hash
    of the destination (the dot keeps it apart from every service name) in `fallback_namespace`.
    """
    ns, _, svc = destination.rpartition("/")
    if is_kubernetes_name(ns) and is_kubernetes_name(svc):
        return ns, svc
    base = re.sub(r"[^a-z0-9-]+", "-", (svc or destination).lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(destination.encode()).hexdigest()[:10]
    namespace = ns if is_kubernetes_name(ns) else fallback_namespace
    return namespace, f"{base or 'destination'}.{digest}"


class KubeStore(AlertsIn):
    """`Store` on Allowlist objects and Namespace labels; alerts go to `alerts`.

    `replica` is this replica's id (the pod name): its counters are kept under it. No I/O in
    the constructor; `start()` starts the watches, `load_profiles()` lists (and raises
    `KubeStoreUnavailable` when the API server cannot be reached).
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        replica: str,
        alerts: AlertStore,
        namespace: str = "meshward",
        limits: Limits | None = None,
        max_writes: int = 20,
        max_object_bytes: int = MAX_OBJECT_BYTES,
        max_attempts: int = 10,
        backoff: float = 0.05,
        live_replicas: Callable[[], set[str]] | None = None,
        alert_events: AlertEvents | None = None,
    ) -> None:
        if not replica:
            raise ValueError("replica id must not be empty")
        self.api = api
        self.replica = replica
        self.namespace = namespace
        self.limits = limits or Limits()
        self.max_writes = max_writes
        self.max_object_bytes = max_object_bytes
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.live_replicas = live_replicas
        self.stats = KubeStoreStats()
        self.alert_store = alerts
        self.alert_events = alert_events
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._lock = threading.Lock()  # state shared with the watch threads
        self._save_lock = threading.Lock()  # one save at a time (the flusher)
        self._base: dict[str, Shared] = {}  # what the engine was handed, per destination
        self._known: dict[str, Shared] = {}  # the last state seen or written, per destination
        self._pending: dict[str, Shared | None] = {}  # changes not yet drained (None: deleted)
        self._own_rvs: dict[tuple[str, str], set[str]] = {}  # our writes' resourceVersions
        self._reported: set[tuple[str, str, int]] = set()  # bad objects reported (generation)
        self._queue: dict[str, dict[str, Any]] = {}  # docs waiting for a write (FIFO)
        self._modes: dict[str, str] = {}
        self._modes_version = 0
        # an outage's retries back off to at most 5 s: a replica catches up soon after it ends
        self._objects = Watcher(
            self._custom.list_cluster_custom_object,
            GROUP,
            VERSION,
            PLURAL,
            name="allowlists",
            backoff_max=5.0,
        )
        self._namespaces = Watcher(self._core.list_namespace, name="namespaces", backoff_max=5.0)

    # ---- lifetime

    def start(self) -> None:
        """Start the watches (Allowlist objects, Namespaces) in their threads."""
        self._objects.start(self._on_object)
        self._namespaces.start(self._on_namespace)

    def wait_synced(self, timeout: float) -> bool:
        """True once both watches listed once (modes are known); for readiness."""
        return wait_for(
            lambda: self._objects.synced.is_set() and self._namespaces.synced.is_set(), timeout
        )

    def close(self) -> None:
        self._objects.stop()
        self._namespaces.stop()
        self._objects.join(5)
        self._namespaces.join(5)
        self.alert_store.close()

    # ---- profiles

    def load_profiles(self) -> dict[str, dict[str, Any]]:
        """Every Allowlist object as the engine's profile document (counts summed)."""
        try:
            listed = self._custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                raise StoreError(
                    f"cluster store: the {RESOURCE} resource does not exist: install meshward's "
                    "CRDs (meshward install | kubectl apply -f -)"
                ) from exc
            raise self._error(exc, "list") from exc
        except Exception as exc:
            raise self._error(exc, "list") from exc
        out: dict[str, dict[str, Any]] = {}
        for obj in _as_dict(listed).get("items") or []:
            shared = self._parse(obj)
            if shared is None or not (shared.rules or shared.removed):  # emptied: no profile
                continue
            with self._lock:
                self._base[shared.destination] = self._known[shared.destination] = shared
                waiting = self._pending.get(shared.destination)
                if waiting is not None and waiting.same(shared):  # the watch saw it first
                    del self._pending[shared.destination]
            out[shared.destination] = profile_doc(shared)
        return out

    def changes(self) -> dict[str, dict[str, Any]]:
        """Other writers' changes since the last call: destination -> the merged document the
        engine must *replace* its profile with (a deleted object: a profile with no rules)."""
        return {
            c.destination: c.doc or {"destination": c.destination, "endpoints": []}
            for c in self.take_changes()
        }

    def take_changes(self) -> list[Change]:
        """Other writers' changes since the last call, with what the engine was handed before
        (`Change.old`), so an engine that learned meanwhile can keep that learning
        (`core.allowlist_merge.rebase`); `meshward.app.adopt` applies them."""
        with self._lock:
            pending, self._pending = self._pending, {}
            out: list[Change] = []
            for dest, shared in pending.items():
                old = self._base.pop(dest, None)
                if shared is not None:
                    self._base[dest] = shared
                doc = profile_doc(shared) if shared is not None else None
                out.append(Change(dest, shared, old, doc, dest in self._queue))
            return out

    def save_profiles(self, docs: dict[str, dict[str, Any]]) -> None:
        """Merge each document into its object. At most `max_writes` objects per call; the rest
        (and anything an outage or a conflict storm stopped) is written by the next call."""
        with self._save_lock:
            self._queue.update(docs)
            todo = list(self._queue)[: self.max_writes]
            self.stats.deferred += len(self._queue) - len(todo)
            for dest in todo:
                doc = self._queue[dest]
                try:
                    self._save_one(dest, doc)
                except ValueError as exc:  # a document the engine should never produce
                    event(log, "profile not saved", logging.ERROR, destination=dest, error=str(exc))
                except (KubeUnavailable, KubeForbidden) as exc:  # nothing else can work now
                    raise self._error(exc, "update") from exc
                except KubeError as exc:  # this object only: the others go on
                    self.stats.errors += 1
                    event(
                        log,
                        "profile not saved",
                        logging.WARNING,
                        destination=dest,
                        error=str(exc)[:300],
                    )
                    if self._queue.get(dest) is doc:  # retried after the others
                        del self._queue[dest]
                        self._queue[dest] = doc
                    continue
                if self._queue.get(dest) is doc:
                    del self._queue[dest]

    def pending_writes(self) -> int:
        """Documents waiting for a write (the cap, an outage)."""
        return len(self._queue)

    def delete_profile(self, destination: str) -> None:
        """Empty the destination's object (its rules and counters; tombstones stay). serve's
        role has no `delete` on allowlists, on purpose: `kubectl delete` removes the object.
        An empty object loads as no profile."""
        with self._save_lock:
            self._queue.pop(destination, None)
            try:
                self._write(
                    destination,
                    lambda current: Shared(
                        destination, removed=set(current.removed), review=current.review
                    ),
                )
            except KubeError as exc:
                raise self._error(exc, "update") from exc
        with self._lock:
            self._base.pop(destination, None)

    def replace_profiles(self, docs: dict[str, dict[str, Any]]) -> None:
        """Make the stored profiles exactly `docs` (allowlist import --replace): other objects
        are deleted, each given one is rewritten with its rules, and its counters under this
        replica. Tombstones stay, except on the rules the import allows again."""
        for dest in set(self.load_profiles()) - set(docs):
            self.delete_profile(dest)
        for dest, doc in docs.items():
            mine = contribution(doc, self.replica)
            with self._save_lock:
                self._queue.pop(dest, None)
                try:
                    self._write(dest, lambda current, mine=mine: self._replaced(current, mine))
                except KubeError as exc:
                    raise self._error(exc, "update") from exc

    def edit(self, destination: str, step: Callable[[Shared], Shared]) -> Change:
        """A person's edit of one destination (`core.review`): `step` on the stored state, in
        one write under the object's resourceVersion (retried on 409 with a fresh state, so a
        concurrent replica's learning is never lost and the edit is never undone). Returns the
        change for this replica's engine (`replica.adopt`); the other replicas take it from
        their watch. Raises what `step` raises (core.review.ReviewError), or StoreError."""
        done: list[Shared] = []

        def update(current: Shared) -> Shared:
            out = step(copy.deepcopy(current))
            done.append(out)
            return out

        with self._save_lock:
            try:
                self._write(destination, update)
            except KubeError as exc:
                raise self._error(exc, "update") from exc
        new = done[-1]
        with self._lock:
            old = self._base.get(destination)
            self._base[destination] = self._known[destination] = new
            self._pending.pop(destination, None)  # what the watch had is older than this write
            unwritten = destination in self._queue
        return Change(destination, new, old, profile_doc(new), unwritten)

    @staticmethod
    def _replaced(current: Shared, mine: Shared) -> Shared:
        mine.removed = current.removed - set(mine.rules)
        mine.review = current.review
        return mine

    def _live(self) -> set[str] | None:
        """The replica ids that may still write (e.g. the serve pods that exist); None: keep
        every id. A failing lookup keeps every id too: folding a live one would count twice."""
        if self.live_replicas is None:
            return None
        try:
            return set(self.live_replicas())
        except Exception as exc:
            event(log, "live replicas unknown", logging.WARNING, error=describe(exc)[:200])
            return None

    # ---- writing one object

    def _save_one(self, dest: str, doc: dict[str, Any]) -> None:
        with self._lock:
            base = self._base.get(dest)
        mine = contribution(doc, self.replica, base)
        if mine.destination != dest:
            raise ValueError(f"document of {mine.destination!r} saved as {dest!r}")

        live = self._live()

        def merged(current: Shared) -> Shared:
            out, refused = merge_counted(current, mine, self.limits)
            self.stats.refused += refused
            return compact(out if live is None else retire(out, live | {self.replica}))

        self._write(dest, merged)

    def _write(self, dest: str, update: Any) -> None:
        """get, `update(current) -> new`, replace spec and status with the resourceVersion;
        409 (or an object created or deleted meanwhile): backoff and again."""
        ns, name = object_ref(dest, self.namespace)
        for attempt in range(self.max_attempts):
            obj = self._get(ns, name)
            bad: list[Any] = []
            if obj is None:
                current = Shared(dest)
            else:
                parsed = from_object(obj)
                if parsed.shared.destination != dest:
                    raise KubeError(
                        f"{RESOURCE} {ns}/{name} holds {parsed.shared.destination!r}, not {dest!r}"
                    )
                if parsed.problems:
                    self._report(obj, parsed.problems)
                current, bad = parsed.shared, parsed.bad_rules
            new = self._fit(update(current), bad)
            if new.same(current):  # nothing new (or nothing at all to create)
                self.stats.unchanged += 1
                return
            try:
                self._put(ns, name, obj, new, bad)
                return
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise from_api_exception(
                        exc, verb="update", resource=RESOURCE, namespace=ns
                    ) from exc
                self.stats.conflicts += 1
                delay = min(1.0, self.backoff * 2**attempt)
                time.sleep(random.uniform(delay / 2, delay))
        raise KubeError(f"{RESOURCE} {ns}/{name}: gave up after {self.max_attempts} conflicts")

    def _get(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return _as_dict(
                self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, name, _request_timeout=TIMEOUT
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise from_api_exception(exc, verb="get", resource=RESOURCE, namespace=ns) from exc
        except Exception as exc:
            raise KubeUnavailable(describe(exc)) from exc

    def _put(
        self, ns: str, name: str, obj: dict[str, Any] | None, new: Shared, bad: list[Any]
    ) -> None:
        body = to_object(new)
        body["spec"]["rules"].extend(bad)  # a person's unparsable edit stays for them to fix
        try:
            if obj is None:
                obj = _as_dict(
                    self._custom.create_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        ns,
                        PLURAL,
                        {
                            "apiVersion": f"{GROUP}/{VERSION}",
                            "kind": KIND,
                            "metadata": {
                                "name": name,
                                "namespace": ns,
                                "labels": dict(MANAGED_BY),
                            },
                            "spec": body["spec"],
                        },
                        _request_timeout=TIMEOUT,
                    )
                )
                self._wrote(ns, name, obj)
            elif obj.get("spec") != body["spec"]:
                obj = _as_dict(
                    self._custom.replace_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        ns,
                        PLURAL,
                        name,
                        {**obj, "spec": body["spec"]},
                        _request_timeout=TIMEOUT,
                    )
                )
                self._wrote(ns, name, obj)
            if (obj.get("status") or {}) != body["status"]:
                obj = _as_dict(
                    self._custom.replace_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        ns,
                        PLURAL,
                        name,
                        {**obj, "status": body["status"]},
                        _request_timeout=TIMEOUT,
                    )
                )
                self._wrote(ns, name, obj)
        except ApiException:
            raise
        except Exception as exc:
            raise KubeUnavailable(describe(exc)) from exc
        self.stats.objects_written += 1
        with self._lock:
            self._known[new.destination] = new
            waiting = self._pending.get(new.destination)
            if waiting is not None:
                # another writer's change not drained yet: it may predate our write (and lack
                # our learning) or follow it; the join of both holds everything
                self._pending[new.destination] = merge(waiting, new, self.limits)

    def _wrote(self, ns: str, name: str, obj: dict[str, Any]) -> None:
        self.stats.writes += 1
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            rvs = self._own_rvs.setdefault((ns, name), set())
            if len(rvs) > 64:
                rvs.clear()
            rvs.add(rv)

    def _fit(self, s: Shared, bad: list[Any]) -> Shared:
        """Drop the last rules (by path) until the object is under `max_object_bytes`."""
        size = _size(to_object(s)) + _size(bad)
        if size <= self.max_object_bytes:
            return s
        costs = _rule_costs(s)
        keys = sorted(s.rules, key=lambda k: (k[1], k[0]))
        drop = set()
        while keys and size > self.max_object_bytes:
            k = keys.pop()
            drop.add(k)
            size -= costs.get(k, 0)
        self.stats.trimmed += len(drop)
        event(
            log,
            "allowlist trimmed to fit",
            logging.WARNING,
            destination=s.destination,
            dropped=len(drop),
            limit=self.max_object_bytes,
        )
        out = Shared(
            s.destination,
            {k: r for k, r in s.rules.items() if k not in drop},
            set(s.sources),
            set(s.removed),
            review=s.review,
        )
        for rid, c in s.replicas.items():
            out.replicas[rid] = type(c)(
                c.seen, dict(c.sources), {k: r for k, r in c.rules.items() if k not in drop}
            )
        return out

    # ---- the watches

    def _parse(self, obj: dict[str, Any]) -> Shared | None:
        """An object's state; what does not parse is reported, the rest kept."""
        try:
            parsed = from_object(obj)
        except ValueError as exc:
            self._report(obj, [str(exc)])
            return None
        if parsed.problems:
            self._report(obj, parsed.problems)
        key = object_key(obj)
        if key is not None and key != object_ref(parsed.shared.destination, self.namespace):
            self._report(
                obj,
                [
                    f"destination {parsed.shared.destination!r} belongs in "
                    f"{'/'.join(object_ref(parsed.shared.destination, self.namespace))}"
                ],
            )
            return None
        return parsed.shared

    def _on_object(self, ev: Event) -> None:
        if ev.type == EventType.SYNC:
            seen: set[str] = set()
            for obj in (ev.objects or {}).values():
                dest = self._changed(obj)
                if dest:
                    seen.add(dest)
            with self._lock:
                for dest in set(self._known) - seen:  # vanished while the watch was down
                    del self._known[dest]
                    self._pending[dest] = None
                    self.stats.changes += 1
            return
        obj = ev.object or {}
        if ev.type == EventType.DELETED:
            dest = ((obj.get("spec") or {}).get("destination")) or ""
            with self._lock:
                if dest and self._known.pop(dest, None) is not None:
                    self._pending[dest] = None
                    self.stats.changes += 1
            return
        self._changed(obj)

    def _changed(self, obj: dict[str, Any]) -> str | None:
        """Note a changed object (not our own write, not what we hold); its destination."""
        key = object_key(obj)
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        shared = self._parse(obj)
        if shared is None or key is None:
            return None
        dest = shared.destination
        with self._lock:
            own = rv in self._own_rvs.get(key, set())
            known = self._known.get(dest)
            self._known[dest] = shared
            if own or (known is not None and known.same(shared)):
                return dest
            self._pending[dest] = shared
            self.stats.changes += 1
        return dest

    def _report(self, obj: dict[str, Any], problems: list[str]) -> None:
        """A hand edit that does not parse: a log line, a counter and a Warning Event on the
        object, once per generation of its spec."""
        meta = obj.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        mark = (ns, name, int(meta.get("generation") or 0))
        with self._lock:
            if mark in self._reported:
                return
            self._reported.add(mark)
        self.stats.bad_objects += 1
        message = f"{len(problems)} part(s) ignored: " + "; ".join(problems)
        event(
            log,
            "allowlist object partly unreadable",
            logging.WARNING,
            namespace=ns,
            name=name,
            problems=message[:500],
        )
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: Any = {
            "metadata": {"generateName": f"{name[:40]}-", "namespace": ns},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": name,
                "namespace": ns,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": "Warning",
            "reason": "InvalidRules",
            "message": message[:1000],
            "source": {"component": COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": COMPONENT,
            "reportingInstance": self.replica,
        }
        try:
            self._core.create_namespaced_event(ns, body, _request_timeout=TIMEOUT)
            self.stats.events += 1
        except Exception as exc:  # reporting never stops loading
            event(
                log,
                "event not recorded",
                logging.WARNING,
                namespace=ns,
                name=name,
                error=describe(exc)[:200],
            )

    # ---- modes: the Namespace label

    def _on_namespace(self, ev: Event) -> None:
        with self._lock:
            modes = dict(self._modes)
            if ev.type == EventType.SYNC:
                modes = {}
                for obj in (ev.objects or {}).values():
                    self._mode_into(modes, obj)
            elif ev.type == EventType.DELETED:
                modes.pop(((ev.object or {}).get("metadata") or {}).get("name", ""), None)
            else:
                self._mode_into(modes, ev.object or {})
            if modes != self._modes:
                self._modes = modes
                self._modes_version += 1

    @staticmethod
    def _mode_into(modes: dict[str, str], obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        mode = (meta.get("labels") or {}).get(MODE_LABEL)
        modes.pop(name, None)
        if mode is None:
            return
        if mode in core_modes.MODES:
            modes[name] = mode
        else:
            event(log, "invalid mode label ignored", logging.WARNING, namespace=name, mode=mode)

    def modes(self) -> dict[str, str]:
        with self._lock:
            return dict(self._modes)

    def modes_version(self) -> int:
        with self._lock:
            return self._modes_version

    def set_mode(self, namespace: str, mode: str) -> None:
        raise StoreError(
            f"the mode of namespace {namespace!r} is its label {MODE_LABEL}: run "
            f"`kubectl label namespace {namespace} {MODE_LABEL}={mode} --overwrite`; "
            "meshward serve has no rights to change it"
        )

    # ---- alerts and edge counts: not in etcd (AlertsIn), stored then told as Events

    def add_alerts(self, alerts: list[dict[str, Any]]) -> None:
        super().add_alerts(alerts)
        if self.alert_events is not None:  # after they are stored: Events are best effort
            self.alert_events.record(alerts)

    # ---- errors

    def _error(self, exc: BaseException, verb: str, namespace: str | None = None) -> StoreError:
        """One line for a person: unreachable (KubeStoreUnavailable), RBAC (verb and resource)."""
        if isinstance(exc, ApiException):
            exc = from_api_exception(exc, verb=verb, resource=RESOURCE, namespace=namespace)
        if isinstance(exc, KubeUnavailable) or not isinstance(exc, KubeError | ApiException):
            return KubeStoreUnavailable(f"cluster store: {describe(exc)}")
        return StoreError(f"cluster store: {exc}")


def _as_dict(v: object) -> dict[str, Any]:
    """Custom-object calls answer the server's JSON as a dict (typed `object`)."""
    if not isinstance(v, dict):
        raise KubeError(f"unexpected answer from the Kubernetes API: {type(v).__name__}")
    return v


def _size(v: Any) -> int:
    return len(json.dumps(v, separators=(",", ":")))


def _rule_costs(s: Shared) -> dict[tuple[str, str], int]:
    """Bytes each rule takes in the object (its spec entry and its counters of every replica)."""
    obj = to_object(s)
    costs = {(r["method"], r["path"]): _size(r) + 1 for r in obj["spec"]["rules"]}
    for rep in obj["status"]["replicas"]:
        for e in rep["rules"]:
            k = (e[0], e[1])
            costs[k] = costs.get(k, 0) + _size(e) + 1
    return costs
