"""The configuration guard of `meshward controller` (docs/mesh-guard.md): watches the objects
that decide how strong the mesh is, and reports each change that weakens a namespace meshward
watches (monitor or enforce) as a Kubernetes Event on the changed object and as a meshward alert.

- Watches (meshward.kube.watch, relisting on expiry): Istio PeerAuthentication,
  AuthorizationPolicy, EnvoyFilter, Sidecar, DestinationRule; Linkerd Server,
  AuthorizationPolicy, MeshTLSAuthentication; running Pods (one cluster-wide watch, each kept
  as a small projection). Namespaces come from the controller's own watch (`on_namespace`).
- The rules are pure (meshward.istio.guard, meshward.linkerd.guard, meshward.core.meshguard);
  this module keeps the last state of every object and diffs each change against it.
- Reports (only while this replica leads, so replicas do not repeat each other): an Event on
  the changed object (Warning, reason = the threat name; Normal `Cleared` when it is undone,
  `Restored` when the controller put its own filter back), and the finding sent to serve's
  `POST /api/v1/findings` (authenticated as the controller; serve keeps it as an alert, so the
  dashboard shows it). Deduplicated (meshward.core.meshguard.Reported), queues bounded, drops
  counted.
- Who made a change: the field manager (`managedFields`) always; the user too when the API
  server's audit log reaches the controller (`add_audit`, from meshward.app.kubeauditport): a
  finding of a live change then waits up to `audit_wait` seconds for the audit Event of its write
  (meshward.core.kubeaudit), and says so when none came.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshward.app.guardlearned import LearnedAllowlists
from meshward.core.kubeaudit import Authors, Change, Skip, record_of
from meshward.core.labels import MODE_LABEL
from meshward.core.log import event
from meshward.core.meshguard import (
    CONFIG_THREATS,
    Finding,
    Obj,
    Reported,
    Scope,
    State,
    Weakness,
    changed_by,
    diff,
    guarded,
    items,
    mapping,
    short,
)
from meshward.core.threats.names import MESH_FILTER_TAMPERED, MESH_UNMESHED_POD
from meshward.istio import guard as istio
from meshward.linkerd import guard as linkerd

log = logging.getLogger("meshward.controller")

COMPONENT = "meshward-controller"
MAX_OBJECTS = 50_000  # per kind: beyond, new objects are counted and not followed
MAX_QUEUE = 10_000  # findings waiting for their Event or their alert
FOUND_AT_START = "(unknown: found at start)"
NOT_GUARDED = "(namespace not guarded before)"
NOT_COMPARED = "(not compared with the learned allowlist before)"
WITHIN_LEARNED = "(within the learned allowlist before)"
FIRST_READ = 3.0  # seconds the watches wait for a first copy of the learned allowlists
PROXIES = (istio.PROXY_CONTAINER, linkerd.PROXY_CONTAINER)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
Rule = Callable[[Obj, Scope], State]


@dataclass(frozen=True)
class GuardedKind:
    kind: str
    group: str
    version: str
    plural: str
    rule: Rule

    @property
    def resource(self) -> str:
        return f"{self.plural}.{self.group}"


KINDS: tuple[GuardedKind, ...] = (
    GuardedKind(
        "PeerAuthentication",
        "security.istio.io",
        "v1beta1",
        "peerauthentications",
        istio.peer_authentication,
    ),
    GuardedKind(
        "AuthorizationPolicy",
        "security.istio.io",
        "v1beta1",
        "authorizationpolicies",
        istio.authorization_policy,
    ),
    GuardedKind(
        "EnvoyFilter",
        "networking.istio.io",
        "v1alpha3",
        "envoyfilters",
        istio.envoy_filter,
    ),
    GuardedKind("Sidecar", "networking.istio.io", "v1beta1", "sidecars", istio.sidecar),
    GuardedKind(
        "DestinationRule",
        "networking.istio.io",
        "v1beta1",
        "destinationrules",
        istio.destination_rule,
    ),
    GuardedKind("Server", "policy.linkerd.io", "v1beta3", "servers", linkerd.server),
    GuardedKind(
        "AuthorizationPolicy",
        "policy.linkerd.io",
        "v1alpha1",
        "authorizationpolicies",
        linkerd.authorization_policy,
    ),
    GuardedKind(
        "MeshTLSAuthentication",
        "policy.linkerd.io",
        "v1alpha1",
        "meshtlsauthentications",
        linkerd.meshtls_authentication,
    ),
    # held for the AuthorizationPolicies that target it (wider than learned)
    GuardedKind("HTTPRoute", "policy.linkerd.io", "v1beta3", "httproutes", linkerd.http_route),
)
# kind -> resource of the objects a Linkerd policy refers to (Scope.refs)
REFERENCED = {
    "Server": "servers.policy.linkerd.io",
    "HTTPRoute": "httproutes.policy.linkerd.io",
    "MeshTLSAuthentication": "meshtlsauthentications.policy.linkerd.io",
}
LINKERD_POLICIES = "authorizationpolicies.policy.linkerd.io"
PODS = "pods"
NAMESPACES = "namespaces"
# the ALLOW policies judged against the learned allowlists, again when those change
POLICY_RESOURCES = (
    "authorizationpolicies.security.istio.io",
    "authorizationpolicies.policy.linkerd.io",
)


def namespace_state(obj: Obj, scope: Scope) -> State:
    """Injection switched off on a watched namespace (Istio's label, Linkerd's annotation)."""
    meta = mapping(obj.get("metadata"))
    if not guarded(mapping(meta.get("labels"))):
        return State()
    a, b = istio.namespace_injection(obj), linkerd.namespace_injection(obj)
    return State((*a.weak, *b.weak), (*a.strong, *b.strong), (str(meta.get("name") or ""),))


def pod_state(obj: Obj, scope: Scope) -> State:
    """A running pod in a watched namespace: injection switched off for it, or no proxy."""
    affects = scope.affects(str(mapping(obj.get("metadata")).get("namespace") or ""))
    if not affects:
        return State()
    weak = [*istio.pod_injection(obj), *linkerd.pod_injection(obj)]
    names = [c.get("name") for c in _containers(obj)]
    if not any(p in names for p in PROXIES):
        detail = "a running pod without istio-proxy or linkerd-proxy: meshward never sees it"
        shown = ",".join(str(n) for n in names)[:200] or "(none)"
        weak.append(Weakness(MESH_UNMESHED_POD, "spec.containers", shown, detail))
    return State(tuple(weak), (), affects)


def _containers(pod: Obj) -> list[Mapping[str, Any]]:
    spec = mapping(pod.get("spec"))
    # a native sidecar (Istio >= 1.19 on Kubernetes >= 1.29) is an init container
    return [
        c
        for c in (*items(spec.get("containers")), *items(spec.get("initContainers")))
        if isinstance(c, Mapping)
    ]


_POD_KEYS = (*istio.POD_KEYS, *linkerd.POD_KEYS)


def slim_pod(pod: Obj) -> dict[str, Any]:
    """What the guard keeps of a pod: names, the inject annotations and labels, the container
    names and who wrote them (managedFields cut to those fields), so memory stays small."""
    meta = mapping(pod.get("metadata"))

    def some(values: Any) -> dict[str, str]:
        return {k: str(v) for k, v in mapping(values).items() if k in _POD_KEYS}

    def owned(fields: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        m = mapping(mapping(fields).get("f:metadata"))
        kept: dict[str, dict[str, Any]] = {
            w: {k: {} for k in mapping(m.get(w)) if k[2:] in _POD_KEYS}
            for w in ("f:annotations", "f:labels")
        }
        if any(kept.values()):
            out["f:metadata"] = {w: v for w, v in kept.items() if v}
        if "f:containers" in mapping(mapping(fields).get("f:spec")):
            out["f:spec"] = {"f:containers": {}}
        return out

    managed = []
    for e in items(meta.get("managedFields")):
        fields = owned(mapping(e).get("fieldsV1"))
        if fields:  # an entry owning nothing the rules read (the kubelet's status) is left out
            managed.append(
                {
                    "manager": _interned(e.get("manager")),
                    "operation": _interned(e.get("operation")),
                    "time": _interned(e.get("time")),
                    "fieldsV1": fields,
                }
            )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": meta.get("name"),
            "namespace": _interned(meta.get("namespace")),
            "uid": meta.get("uid"),
            "labels": some(meta.get("labels")),
            "annotations": some(meta.get("annotations")),
            "managedFields": managed,
        },
        "spec": {
            key: [
                {"name": mapping(c).get("name")} for c in items(mapping(pod.get("spec")).get(key))
            ]
            for key in ("containers", "initContainers")
        },
    }


def _interned(value: Any) -> Any:
    """One copy of the strings thousands of pods repeat (namespaces, managers, times)."""
    return sys.intern(value) if isinstance(value, str) and len(value) <= 128 else value


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """A custom object without kubectl's copy of itself (it doubles the size)."""
    annotations = obj.get("metadata", {}).get("annotations")
    if isinstance(annotations, dict) and LAST_APPLIED in annotations:
        obj["metadata"]["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return obj


@dataclass
class GuardCounters:
    findings: collections.Counter[str] = field(default_factory=collections.Counter)
    cleared: collections.Counter[str] = field(default_factory=collections.Counter)
    restored: int = 0
    events: int = 0
    event_errors: int = 0
    alerts_sent: int = 0
    alerts_failed: int = 0  # sends that failed (retried)
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    # audit Events by outcome: kept, skipped-REASON; findings joined-resourceVersion|time,
    # not-joined (no audit Event within the wait)
    audit: collections.Counter[str] = field(default_factory=collections.Counter)


Entry = tuple[Finding, str, float, Change | None]  # a finding, its Event's reason, when, its change


class MeshGuard:
    """The guard's views and reports. Watch threads call the handlers; one reporter thread
    writes Events and sends alerts."""

    def __init__(
        self,
        api_client: Any,
        *,
        root_namespace: str = "istio-system",
        alerts: Any = None,  # meshward.runtime.client.ApiClient of serve, or None
        leading: threading.Event | None = None,
        kinds: tuple[GuardedKind, ...] = KINDS,
        hold: float = 30.0,
        authors: Authors | None = None,  # the audit log's recent writes (None: not configured)
        audit_wait: float = 35.0,
        learned: LearnedAllowlists | None = None,  # default: read from `alerts`' serve
    ) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.root = root_namespace
        self.alerts = alerts
        self.leading = leading
        self.hold = hold  # seconds findings wait for this replica to lead before they are dropped
        self.authors = authors
        self.audit_wait = audit_wait  # seconds a finding waits for the audit Event of its change
        self._audit_lock = threading.Lock()
        self._tampering: dict[tuple[str, str, str], Change] = {}  # meshward's own, reported
        # (group, kind, namespace, name) -> is it the controller's own object (Controller.owns)
        self.owned: Callable[[str, str, str, str], bool] = lambda *_: False
        self.kinds = {k.resource: k for k in kinds}
        self.counters = GuardCounters()
        self.reported = Reported()
        self.views: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self._synced: set[str] = set()
        self._lock = threading.Lock()
        # findings waiting for their report, with the Event's reason and the change to join
        self._out: collections.deque[Entry] = collections.deque()
        self._alert_queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watchers: list[Any] = []
        self._thread: threading.Thread | None = None
        self._learned_thread: threading.Thread | None = None
        # the learned allowlists ALLOW policies are compared with (Mesh.Policy.Widened)
        self.learned = learned if learned is not None else LearnedAllowlists(alerts)

    # ---- scope and rules
    def scope(self) -> Scope:
        labels = {
            n: mapping(mapping(o.get("metadata")).get("labels")) for n, o in self.namespaces.items()
        }
        watched = frozenset(n for n, v in labels.items() if guarded(v))
        enforcing = frozenset(n for n in watched if labels[n].get(MODE_LABEL) == "enforce")
        return Scope(watched, self.root, enforcing, self.learned.current(), self._ref)

    def _ref(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A guarded object by kind (REFERENCED), namespace and name (under the lock)."""
        return self.views.get(REFERENCED.get(kind, ""), {}).get((namespace, name))

    def _state(self, resource: str, obj: Obj | None, scope: Scope) -> State:
        if obj is None:
            return State()
        if resource == PODS:
            return pod_state(obj, scope)
        if resource == NAMESPACES:
            return namespace_state(obj, scope)
        kind = self.kinds[resource]
        meta = mapping(obj.get("metadata"))
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if self.owned(kind.group, kind.kind, ns, name):
            # the controller's own object: its reconcile reports (and undoes) any change. Known
            # by the controller's desired set, never by a label anyone may put on anything
            return State()
        return kind.rule(obj, scope)

    def _kind(self, resource: str) -> str:
        if resource == PODS:
            return "Pod"
        if resource == NAMESPACES:
            return "Namespace"
        return self.kinds[resource].kind

    def _change(
        self,
        resource: str,
        old: Obj | None,
        new: Obj | None,
        old_label: str | None = None,
        rv: str = "",
    ) -> None:
        """Diff one change (under the lock) and queue its fresh findings; `rv`: the watch
        event's resourceVersion (joins the audit Event of the write)."""
        scope = self.scope()
        found = diff(
            self._kind(resource),
            old,
            new,
            self._state(resource, old, scope),
            self._state(resource, new, scope),
            old_label,
        )
        # found at start: the writes are long past; a live change (or one seen by a relist)
        # waits for its audit Event
        self._queue(found, self._audited(resource, old, new, rv) if old_label is None else None)

    def _audited(self, resource: str, old: Obj | None, new: Obj | None, rv: str) -> Change | None:
        """The change to join with its audit Event (None: no audit log configured)."""
        if self.authors is None:
            return None
        meta = mapping((new if new is not None else old or {}).get("metadata"))
        if resource in (PODS, NAMESPACES):
            group, plural = "", resource
        else:
            group, plural = self.kinds[resource].group, self.kinds[resource].plural
        return Change(
            group,
            plural,
            "" if resource == NAMESPACES else str(meta.get("namespace") or ""),
            str(meta.get("name") or ""),
            deleted=new is None,
            seen=time.time(),
            # a pod is seen when it runs (a status write the audit policy leaves out), long
            # after the write that made it: its latest write, whenever
            resource_version="" if resource == PODS else rv,
            any_time=resource == PODS,
        )

    def _own_change(self, f: Finding, rv: str) -> Change | None:
        """The change behind a finding of meshward's own object (its kind and group known):
        the tampered state's resourceVersion for an edit (the controller's own write putting it
        back comes right after: time alone could name it), a deletion's time."""
        if self.authors is None:
            return None
        group = f.api_version.partition("/")[0] if "/" in f.api_version else ""
        plurals = [k.plural for k in self.kinds.values() if (k.group, k.kind) == (group, f.kind)]
        if not plurals:
            return None
        deleted = f.new.startswith("(deleted")
        return Change(group, plurals[0], f.namespace, f.name, deleted, time.time(), rv)

    def _queue(self, found: list[Finding], change: Change | None = None) -> None:
        for f in self.reported.fresh(found):
            if len(self._out) >= MAX_QUEUE:
                self.counters.dropped["queue-full"] += 1
                self.reported.forget(f)  # not said: the next relist or change says it
                continue
            reason = "Cleared" if f.cleared else f.threat
            self._out.append((f, reason, time.monotonic(), change))
            self._wake.set()

    # ---- the audit log
    def add_audit(self, events: list[Any]) -> tuple[int, int]:
        """Audit Events (`audit.k8s.io/v1`, from the webhook): the writes are kept for the
        join, the rest counted by why; returns (kept, skipped). Never raises on bad input."""
        if self.authors is None:
            return 0, len(events)
        records = []
        for doc in events:
            try:
                records.append(record_of(doc))
            except Skip as skip:
                self.counters.audit[f"skipped-{skip.reason}"] += 1
        with self._audit_lock:
            now = time.time()
            for r in records:
                self.authors.add(r, now)
        self.counters.audit["kept"] += len(records)
        if records:
            self._wake.set()
        return len(records), len(events) - len(records)

    def _joined(self, entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
        """Findings ready to report (with their user where the audit log names one) and those
        still waiting for their audit Event. A later finding of an object waits behind an
        earlier one, so an object's Events keep their order."""
        if self.authors is None:
            return entries, []
        ready: list[Entry] = []
        held: list[Entry] = []
        holding: set[tuple[str, str, str]] = set()
        now = time.monotonic()
        for f, reason, t, change in entries:
            obj = (f.kind, f.namespace, f.name)
            if change is not None:
                with self._audit_lock:
                    record, how = self.authors.find(change)
                if record is not None:
                    detail = f"{record.describe()}, matched by {how}"
                    f = dataclasses.replace(f, user=record.who[:300], user_detail=detail[:1000])
                    self.counters.audit[f"joined-{how}"] += 1
                elif now - t < self.audit_wait:
                    held.append((f, reason, t, change))
                    holding.add(obj)
                    continue
                else:
                    wait = f"{self.audit_wait:g}"
                    f = dataclasses.replace(
                        f, user_detail=f"unknown (no audit Event of this change within {wait} s)"
                    )
                    self.counters.audit["not-joined"] += 1
            (held if obj in holding else ready).append((f, reason, t, None))
        return ready, held

    # ---- the watches' handlers
    def handler(self, resource: str) -> Callable[[Any], None]:
        def handle(ev: Any) -> None:
            with self._lock:
                view = self.views.setdefault(resource, {})
                if ev.type == "SYNC":
                    first = resource not in self._synced
                    self._synced.add(resource)
                    fresh = {k: self._keep(resource, o) for k, o in (ev.objects or {}).items()}
                    for key, obj in list(fresh.items())[:MAX_OBJECTS]:
                        rv = str(mapping(obj.get("metadata")).get("resourceVersion") or "")
                        label = FOUND_AT_START if first else None
                        self._change(resource, view.get(key), obj, label, rv)
                    for key, gone in view.items():
                        if key not in fresh:
                            self._change(resource, gone, None)
                    if len(fresh) > MAX_OBJECTS:
                        self.counters.dropped["too-many-objects"] += len(fresh) - MAX_OBJECTS
                        fresh = dict(list(fresh.items())[:MAX_OBJECTS])
                    self.views[resource] = fresh
                    self._referenced(resource, None, None, view)
                    return
                obj = ev.object
                if obj is None:
                    return
                meta = obj.get("metadata", {})
                key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
                old = view.get(key)
                rv = str(meta.get("resourceVersion") or "")
                if ev.type == "DELETED":
                    view.pop(key, None)
                    self._change(resource, old, None, rv=rv)
                    self._referenced(resource, key, old, None)
                    return
                kept = self._keep(resource, obj)
                if old is None and len(view) >= MAX_OBJECTS:
                    self.counters.dropped["too-many-objects"] += 1
                    return
                view[key] = kept
                self._change(resource, old, kept, rv=rv)
                self._referenced(resource, key, old, kept)

        return handle

    def _referenced(
        self,
        resource: str,
        key: tuple[str, str] | None,
        old: Obj | None,
        old_view: Mapping[Any, Obj] | None = None,
    ) -> None:
        """A Server, HTTPRoute or MeshTLSAuthentication changed (`key`: one object, whose
        last state was `old`; None: a relist, whose last view was `old_view`): the Linkerd
        policies that may refer to it are judged again, before and after (under the lock)."""
        kind = next((k for k, r in REFERENCED.items() if r == resource), None)
        if kind is None or not self.views.get(LINKERD_POLICIES):
            return
        now = self.scope()

        def before(k: str, ns: str, name: str) -> Obj | None:
            if k != kind:
                return self._ref(k, ns, name)
            if key is None:
                return (old_view or {}).get((ns, name))
            return old if (ns, name) == key else self._ref(k, ns, name)

        was = dataclasses.replace(now, refs=before)
        for (ns, _), policy in self.views.get(LINKERD_POLICIES, {}).items():
            if key is None or ns == key[0]:
                found = diff(
                    "AuthorizationPolicy",
                    policy,
                    policy,
                    self._state(LINKERD_POLICIES, policy, was),
                    self._state(LINKERD_POLICIES, policy, now),
                    f"(before its {kind} changed)",
                )
                self._queue(found)

    def _keep(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        return slim_pod(obj) if resource == PODS else slim(obj)

    def on_namespace(self, ev: Any) -> None:
        """The controller's namespace watch: the namespace's own injection settings, and, when
        the set of watched namespaces changes, every object there seen again."""
        with self._lock:
            before = self.scope()
            if ev.type == "SYNC":
                first = NAMESPACES not in self._synced
                self._synced.add(NAMESPACES)
                fresh = {
                    name: slim(o)
                    for (_, name), o in (ev.objects or {}).items()
                    if not mapping(o.get("metadata")).get("deletionTimestamp")
                }
                olds = dict(self.namespaces)
                self.namespaces = fresh
                label = FOUND_AT_START if first else None
                for name, obj in fresh.items():
                    self._ns_change(olds.get(name), obj, before, label)
            elif ev.object is not None:
                meta = ev.object.get("metadata", {})
                name = str(meta.get("name") or "")
                old = self.namespaces.get(name)
                if ev.type == "DELETED" or meta.get("deletionTimestamp"):
                    self.namespaces.pop(name, None)
                    new = None
                else:
                    new = self.namespaces[name] = slim(ev.object)
                rv = str(meta.get("resourceVersion") or "")
                self._ns_change(old, new, before, None, self._audited(NAMESPACES, old, new, rv))
            after = self.scope()
            if after.watched != before.watched:
                self._rescope(before, after)

    def _ns_change(
        self,
        old: Obj | None,
        new: Obj | None,
        before: Scope,
        old_label: str | None,
        change: Change | None = None,
    ) -> None:
        was = namespace_state(old, before) if old is not None else State()
        now = namespace_state(new, self.scope()) if new is not None else State()
        if old is not None and not was.affects and now.affects:
            old_label = NOT_GUARDED  # it just became monitor or enforce
        found = diff("Namespace", old, new, was, now, old_label)
        if new is None or not now.affects:  # no longer guarded (or gone): forget, say nothing
            for f in found:
                self.reported.forget(f)
            return
        self._queue(found, change)

    def _rescope(self, before: Scope, after: Scope) -> None:
        """Objects whose guarded status changed with the namespaces: findings for those now
        guarded (old value: not guarded before), silence for those no longer guarded."""
        changed = before.watched ^ after.watched
        for resource, view in self.views.items():
            for (ns, _), obj in view.items():
                if ns not in changed and ns != self.root and resource != "destinationrules":
                    continue
                was = self._state(resource, obj, before)
                now = self._state(resource, obj, after)
                found = diff(self._kind(resource), obj, obj, was, now, NOT_GUARDED)
                if not now.affects:  # no longer guarded: its strengths are not lost, just unwatched
                    for f in found:
                        self.reported.forget(f)
                    continue
                for f in found:
                    if f.cleared:
                        self.reported.forget(f)
                self._queue([f for f in found if not f.cleared])

    # ---- the learned allowlists (Mesh.Policy.Widened, "wider than learned")
    def read_learned(self) -> None:
        """Read serve's allowlists again; when what the rules see changed, judge every ALLOW
        policy again: a policy now wider than learned is a finding (old value: how it was
        judged before), one no longer wider is cleared. Losing the comparison (serve gone
        past the cache's age) forgets the learned findings instead of clearing them: nothing
        was narrowed, the guard just cannot tell (it logs and counts that)."""
        before = self.learned.current()
        if not self.learned.read():
            return
        after = self.learned.current()
        with self._lock:
            scope = self.scope()
            was = dataclasses.replace(scope, learned=before)
            label = NOT_COMPARED if before.allowlist is None else WITHIN_LEARNED
            for resource in POLICY_RESOURCES:
                for obj in self.views.get(resource, {}).values():
                    old = self._state(resource, obj, was)
                    new = self._state(resource, obj, scope)
                    found = diff(self._kind(resource), obj, obj, old, new, label)
                    if after.allowlist is None:
                        for f in found:
                            self.reported.forget(f)
                        continue
                    self._queue(found)

    def _learn(self, first: threading.Event) -> None:
        while True:
            try:
                self.read_learned()
            except Exception:  # a bug here must not end the comparison for good
                self.counters.dropped["learned-read-failed"] += 1
                log.exception("mesh guard: reading the learned allowlists failed")
            first.set()
            if self._stop.wait(self.learned.refresh):
                return

    # ---- meshward's own objects (the controller's reconcile calls these)
    def tampered(
        self, kind: str, have: Obj | None, seen: Obj | None, want: Obj, manager: str
    ) -> Finding | None:
        """meshward's own object edited by another manager (`have` differs from `want` and
        someone else wrote its spec last) or deleted (`have` None, `seen` its last state)."""
        meta = want["metadata"]
        base: dict[str, Any] = dict(
            kind=kind,
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            api_version=str(want.get("apiVersion") or ""),
        )
        detail = "meshward's own filter; the controller puts it back"
        if have is None:
            if seen is None:
                return None
            uid = str(seen.get("metadata", {}).get("uid") or "")
            return Finding(
                MESH_FILTER_TAMPERED,
                field="metadata",
                old="present",
                new="(deleted, or its managed-by label removed)",
                by=changed_by(None, "spec"),
                detail=detail,
                affects=(base["namespace"],),
                uid=uid,
                **base,
            )
        others = [
            e
            for e in have.get("metadata", {}).get("managedFields") or []
            if e.get("manager") != manager and "f:spec" in (e.get("fieldsV1") or {})
        ]
        ours = [
            str(e.get("time") or "")
            for e in have.get("metadata", {}).get("managedFields") or []
            if e.get("manager") == manager
        ]
        latest_ours = max(ours, default="")
        if not any(str(e.get("time") or "") >= latest_ours for e in others):
            return None  # only meshward wrote it since: a desired-state change, no tampering
        changed = [
            k
            for k in sorted(set(want.get("spec", {})) | set(have.get("spec") or {}))
            if (have.get("spec") or {}).get(k) != want.get("spec", {}).get(k)
        ]
        path = f"spec.{changed[0]}" if changed else "spec"
        return Finding(
            MESH_FILTER_TAMPERED,
            field=path,
            old=short(want.get("spec", {}).get(changed[0]) if changed else want.get("spec")),
            new=short((have.get("spec") or {}).get(changed[0]) if changed else have.get("spec")),
            by=changed_by(have, path),
            detail=detail,
            affects=(base["namespace"],),
            uid=str(have.get("metadata", {}).get("uid") or ""),
            **base,
        )

    def report_tampered(self, finding: Finding, rv: str = "") -> None:
        """`rv`: the tampered state's resourceVersion ("" for a deletion)."""
        with self._lock:
            self.reported.forget(finding)  # each tampering is news, even the same one again
            change = self._own_change(finding, rv)
            if change is not None:  # the Restored Event that follows names the same write
                self._tampering[(finding.kind, finding.namespace, finding.name)] = change
                while len(self._tampering) > MAX_QUEUE:
                    self._tampering.pop(next(iter(self._tampering)))
            self._queue([finding], change)

    def report_restored(self, finding: Finding, obj_uid: str) -> None:
        """The controller put its object back: a Normal `Restored` Event."""
        with self._lock:
            self.counters.restored += 1
            restored = dataclasses.replace(finding, cleared=True, uid=obj_uid or finding.uid)
            change = self._tampering.pop((finding.kind, finding.namespace, finding.name), None)
            self._out.append((restored, "Restored", time.monotonic(), change))
            self._wake.set()

    # ---- reports
    def _leads(self) -> bool:
        return self.leading is None or self.leading.is_set()

    def _report(self, f: Finding, reason: str) -> None:
        if f.cleared:
            self.counters.cleared[f.threat] += 1
        else:
            self.counters.findings[f.threat] += 1
        level = logging.INFO if f.cleared else logging.WARNING
        event(
            log,
            "mesh guard cleared" if f.cleared else "mesh guard finding",
            level,
            threat=f.threat,
            kind=f.kind,
            namespace=f.namespace,
            name=f.name,
            field=f.field,
            old=f.old,
            new=f.new,
            by=f.by,
        )
        self._event(f, reason)
        if not f.cleared and self.alerts is not None:
            if len(self._alert_queue) >= MAX_QUEUE:
                self.counters.dropped["alert-queue-full"] += 1
            else:
                self._alert_queue.append(f.as_dict())

    def _event(self, f: Finding, reason: str) -> None:
        involved = {
            "apiVersion": f.api_version or "v1",
            "kind": f.kind,
            "name": f.name,
            "namespace": f.namespace or f.name,  # a Namespace's Events live in itself
            "uid": f.uid,
        }
        message = f.message()
        if reason == "Restored":
            where = f"{f.kind} {f.namespace}/{f.name}"
            message = f"{where} put back by {COMPONENT} after {f.threat} ({f.field}) by {f.by}"
            if f.user_detail:
                message += f"; user {f.user_detail}"
        body: Any = event_body(
            involved, "Normal" if f.cleared else "Warning", reason, message, COMPONENT
        )
        try:
            self.core.create_namespaced_event(involved["namespace"], body, _request_timeout=(5, 10))
            self.counters.events += 1
        except Exception as exc:  # best effort: the log line and the alert remain
            self.counters.event_errors += 1
            event(
                log,
                "mesh guard event not recorded",
                logging.WARNING,
                namespace=involved["namespace"],
                reason=reason,
                error=str(exc)[:200],
            )

    def _send_alerts(self) -> None:
        from meshward.runtime.client import ApiError

        while self._alert_queue and not self._stop.is_set():
            batch = list(self._alert_queue)[:100]
            try:
                self.alerts.post_findings(batch)
            except ApiError as exc:
                self.counters.alerts_failed += 1
                if exc.retryable:
                    event(log, "findings not sent", logging.WARNING, error=str(exc)[:200])
                    self._stop.wait(2.0)
                    return
                self.counters.dropped["alert-refused"] += len(batch)
                event(log, "findings refused", logging.ERROR, error=str(exc)[:200])
            else:
                self.counters.alerts_sent += len(batch)
            for _ in batch:
                self._alert_queue.popleft()

    def run(self) -> None:
        """The reporter: Events and alerts, off the watch threads."""
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._leads():
                # a replica starting up waits for the Lease a while (what it found at start is
                # the leader's to say, or its own once it leads); past `hold`, the findings
                # are the leader's, who saw them too
                with self._lock:
                    old = time.monotonic() - self.hold
                    while self._out and self._out[0][2] < old:
                        self._out.popleft()
                        self.counters.dropped["not-leader"] += 1
                continue
            with self._lock:
                found, self._out = list(self._out), collections.deque()
            try:
                found, held = self._joined(found)
                if held:  # back at the front, before what came meanwhile
                    with self._lock:
                        self._out.extendleft(reversed(held))
                for f, reason, _, _ in found:
                    self._report(f, reason)
                if self._alert_queue:
                    self._send_alerts()
            except Exception:  # a bug here must not end the reporting for good
                self.counters.dropped["report-failed"] += 1
                log.exception("mesh guard report failed")
                self._stop.wait(1.0)

    # ---- life
    def start(self) -> None:
        from meshward.kube.watch import Watcher

        watchers: list[tuple[Any, str]] = [
            (
                Watcher(
                    self.core.list_pod_for_all_namespaces,
                    field_selector="status.phase=Running",
                    name="guard-pods",
                    backoff_max=120.0,
                ),
                PODS,
            )
        ]
        for k in self.kinds.values():
            w = Watcher(
                self.custom.list_cluster_custom_object,
                k.group,
                k.version,
                k.plural,
                name=f"guard-{k.resource}",
                backoff_max=120.0,  # a mesh not installed: its CRD missing, looked for again
            )
            watchers.append((w, k.resource))
        if self.learned.client is not None:
            first = threading.Event()
            self._learned_thread = threading.Thread(
                target=self._learn, args=(first,), name="mesh-guard-learned", daemon=True
            )
            self._learned_thread.start()
            # a first copy before the first lists if serve answers soon: what is found at start
            # is then compared at once (else a little later, when the copy comes)
            first.wait(FIRST_READ)
        for w, resource in watchers:
            w.start(self.handler(resource))
            self._watchers.append(w)
        self._thread = threading.Thread(target=self.run, name="mesh-guard", daemon=True)
        self._thread.start()

    def synced(self) -> bool:
        return all(w.synced.is_set() for w in self._watchers)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for w in self._watchers:
            w.stop()
        for w in self._watchers:
            w.join(5)
        self._watchers.clear()
        for thread in (self._thread, self._learned_thread):
            if thread is not None:
                thread.join(5)

    def watched(self) -> dict[str, int]:
        with self._lock:
            return {r: len(v) for r, v in self.views.items()}


def event_body(
    involved: Mapping[str, str], kind: str, reason: str, message: str, component: str
) -> dict[str, Any]:
    """A core/v1 Event about `involved` (its namespace is the Event's)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"generateName": "meshward-", "namespace": involved["namespace"]},
        "involvedObject": {k: v for k, v in involved.items() if v},
        "type": kind,
        "reason": reason,
        "message": message[:1000],
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": component,
    }


__all__ = ["CONFIG_THREATS", "KINDS", "MeshGuard", "event_body", "pod_state", "slim_pod"]
