"""Who made a change, from the Kubernetes API server's audit log (`audit.k8s.io/v1` Events).

`managedFields` names a tool (`kubectl-client-side-apply`), never a user, and nothing at all for
a deletion; the API server's audit log names the authenticated user, their groups, whom they
impersonated, where they came from and with what agent. The controller receives audit Events
(its audit webhook, meshward.app.kubeauditport) and the configuration guard joins each change it
sees on a watch with the audit Event of the write that made it (docs/mesh-guard.md):

- `record_of` reads one Event into a small `AuditRecord` (bounded strings), or says why it is
  not one the guard joins (`Skip.reason`: a read, a failed or dry-run request, a subresource,
  another stage, malformed input): the caller counts those.
- `Authors` keeps the recent records of each object, bounded in count and time, and `find`s
  the one of a `Change`: the record whose response carried the same resourceVersion as the
  watch event (certain; RequestResponse level), else the write of the same kind (a deletion or
  not) closest in time to when the watch saw it, among records without a resourceVersion
  (Metadata level) or, for a change without one, any record.

Events arrive before the watch event (blocking webhook) or after it (batched, up to the
webhook's max wait): the guard holds a finding a short while for its record
(meshward.app.meshguard).

No I/O, no clock: times are passed in.
"""

from __future__ import annotations

import datetime
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WRITES = frozenset({"create", "update", "patch"})
DELETES = frozenset({"delete", "deletecollection"})
MAX_TEXT = 256  # characters kept of one string of an Event
MAX_GROUPS = 16
MAX_IPS = 8
MAX_BATCH = 5_000  # Events in one EventList (the API server sends at most 400 by default)


class Skip(ValueError):
    """An audit Event the guard does not join; `reason` is the label its drop is counted by."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True)
class AuditRecord:
    """One successful write of one object, as the audit log tells it."""

    group: str  # objectRef.apiGroup ("" for the core group)
    resource: str  # the plural: peerauthentications
    namespace: str
    name: str  # "" for a deletecollection
    verb: str
    user: str  # user.username: who authenticated
    groups: tuple[str, ...]
    impersonated: str  # impersonatedUser.username ("" when nobody was impersonated)
    source_ips: tuple[str, ...]
    user_agent: str
    received: str  # requestReceivedTimestamp, as the API server wrote it
    at: float  # stageTimestamp (the response completed), Unix seconds
    resource_version: str  # of responseObject ("" at Metadata level)
    audit_id: str

    @property
    def who(self) -> str:
        """The user, and whom they acted as: `alice`, `admin as carol`."""
        return f"{self.user} as {self.impersonated}" if self.impersonated else self.user

    def describe(self) -> str:
        """One line for a finding: who, groups, from where, with what, what and when."""
        parts = [f"groups {','.join(self.groups) or '(none)'}"]
        if self.source_ips:
            parts.append(f"from {','.join(self.source_ips)}")
        if self.user_agent:
            parts.append(f"agent {self.user_agent}")
        parts.append(f"{self.verb} at {self.received}")
        parts.append(f"audit ID {self.audit_id}")
        return f"{self.who} ({'; '.join(parts)})"


def _text(value: Any, most: int = MAX_TEXT) -> str:
    """A printable, bounded string of `value` ("" for anything that is not a string)."""
    if not isinstance(value, str):
        return ""
    text = value[:most]
    if text.isprintable():  # nearly always: one C-level pass
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def _texts(value: Any, most: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(t for t in (_text(v, 128) for v in value[:most]) if t)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def timestamp(value: Any) -> float:
    """An RFC 3339 time (`2026-12-06T10:00:00.123456Z`) as Unix seconds (Skip when it is not)."""
    if not isinstance(value, str) or len(value) > 40:
        raise Skip("malformed", "a timestamp must be an RFC 3339 string")
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise Skip("malformed", f"not an RFC 3339 time: {value[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def events_of(doc: Any) -> list[Any]:
    """The Events of a batch: an `audit.k8s.io/v1` EventList (what the webhook backend posts),
    or a JSON array of Events (what a log shipper forwarding the log backend's lines posts).
    ValueError for anything else, or more than MAX_BATCH Events."""
    if isinstance(doc, Mapping):
        if doc.get("kind") != "EventList" or not str(doc.get("apiVersion", "")).startswith(
            "audit.k8s.io/"
        ):
            raise ValueError("expected an audit.k8s.io EventList")
        items = doc.get("items")
        if items is None:
            return []
    else:
        items = doc
    if not isinstance(items, list):
        raise ValueError("an EventList's items must be a list")
    if len(items) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} Events in one batch")
    return items


def record_of(doc: Any) -> AuditRecord:
    """The record of one audit Event; Skip (with its reason) when the guard has no use for it."""
    if not isinstance(doc, Mapping):
        raise Skip("malformed", "an audit Event is a JSON object")
    verb = doc.get("verb")
    if not isinstance(verb, str):
        raise Skip("malformed", "an audit Event has a verb")
    if verb not in WRITES and verb not in DELETES:
        raise Skip("not-a-write")
    if doc.get("stage") != "ResponseComplete":
        raise Skip("stage")  # RequestReceived (no outcome yet), ResponseStarted, Panic
    status = _mapping(doc.get("responseStatus"))
    code = status.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or not 200 <= code < 300:
        raise Skip("failed")  # refused or failed: it changed nothing
    uri = doc.get("requestURI")
    if isinstance(uri, str) and "dryRun=" in uri.partition("?")[2]:
        raise Skip("dry-run")  # validated, never stored
    ref = _mapping(doc.get("objectRef"))
    resource = _text(ref.get("resource"), 128)
    if not resource:
        raise Skip("malformed", "an audit Event of a write has an objectRef.resource")
    if ref.get("subresource"):
        raise Skip("subresource")  # status, finalize, scale: not what the guard reads
    user = _mapping(doc.get("user"))
    username = _text(user.get("username"))
    if not username:
        raise Skip("malformed", "an audit Event names its user.username")
    received = doc.get("requestReceivedTimestamp")
    at = timestamp(doc.get("stageTimestamp") or received)
    timestamp(received)
    response = _mapping(doc.get("responseObject"))
    rv = _text(_mapping(response.get("metadata")).get("resourceVersion"), 64)
    if response.get("kind") == "Status":
        rv = ""  # a delete answered with a Status carries no object
    group = _text(ref.get("apiGroup"), 253)
    namespace = _text(ref.get("namespace"), 63)
    if resource == "namespaces" and not group:
        namespace = ""  # /api/v1/namespaces/x names x as its namespace too; it has none
    return AuditRecord(
        group=group,
        resource=resource,
        namespace=namespace,
        name=_text(ref.get("name"), 253),
        verb=verb,
        user=username,
        groups=_texts(user.get("groups"), MAX_GROUPS),
        impersonated=_text(_mapping(doc.get("impersonatedUser")).get("username")),
        source_ips=_texts(doc.get("sourceIPs"), MAX_IPS),
        user_agent=_text(doc.get("userAgent")),
        received=_text(received, 40),
        at=at,
        resource_version=rv,
        audit_id=_text(doc.get("auditID"), 64),
    )


@dataclass(frozen=True)
class Change:
    """A change the guard saw on a watch, to be joined with its audit record."""

    group: str
    resource: str
    namespace: str
    name: str
    deleted: bool | None  # None: either (meshward's own filter deleted or its label removed)
    seen: float  # Unix seconds, when the watch event arrived
    resource_version: str = ""  # of the watch event's object ("": unknown)
    any_time: bool = False  # a pod: Running long after the write that made it

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.group, self.resource, self.namespace, self.name)


ObjKey = tuple[str, str, str, str]  # group, resource, namespace, name


@dataclass
class Authors:
    """The recent audit records, by object: bounded in objects, records per object and age."""

    retention: float = 600.0  # seconds a record is kept
    skew: float = 10.0  # seconds a record's time may differ from the watch event's (clocks)
    size: int = 20_000  # records in all
    per_object: int = 16
    _by_object: OrderedDict[ObjKey, deque[AuditRecord]] = field(default_factory=OrderedDict)
    _count: int = 0
    counters: Counter[str] = field(default_factory=Counter)

    def add(self, record: AuditRecord, now: float) -> None:
        key = (record.group, record.resource, record.namespace, record.name)
        kept = self._by_object.get(key)
        if kept is None:
            kept = self._by_object[key] = deque()
        else:
            self._by_object.move_to_end(key)
        if len(kept) >= self.per_object:
            kept.popleft()
            self._count -= 1
            self.counters["evicted"] += 1
        kept.append(record)
        self._count += 1
        self.counters["kept"] += 1
        while kept and kept[0].at < now - self.retention:  # this object's old writes
            kept.popleft()
            self._count -= 1
            self.counters["expired"] += 1
        if not kept:
            del self._by_object[key]
        self.expire(now)

    def expire(self, now: float) -> None:
        """Forget records older than `retention`, and the least recently written objects' beyond
        `size` (counted)."""
        old = now - self.retention
        while self._by_object:
            kept = next(iter(self._by_object.values()))
            if self._count <= self.size and (not kept or kept[-1].at >= old):
                break
            self._by_object.popitem(last=False)
            self._count -= len(kept)
            self.counters["evicted" if kept and kept[-1].at >= old else "expired"] += len(kept)

    def find(self, change: Change) -> tuple[AuditRecord | None, str]:
        """The record of `change` and how it was matched (`resourceVersion`, `time`), or
        (None, "")."""
        if change.deleted is None:
            verbs = WRITES | DELETES
        else:
            verbs = DELETES if change.deleted else WRITES
        kept = [r for r in self._by_object.get(change.key, ()) if r.verb in verbs]
        if change.deleted is not False:  # a deletecollection names no object
            whole = (change.group, change.resource, change.namespace, "")
            kept += [r for r in self._by_object.get(whole, ()) if r.verb == "deletecollection"]
        rv = change.resource_version
        if rv:
            exact = [r for r in kept if r.resource_version == rv]
            if exact:
                return exact[-1], "resourceVersion"
            kept = [r for r in kept if not r.resource_version]  # the others are other writes
        if not change.any_time:
            kept = [r for r in kept if abs(r.at - change.seen) <= self.skew]
        if not kept:
            return None, ""
        return min(kept, key=lambda r: (abs(r.at - change.seen), -r.at)), "time"

    def __len__(self) -> int:
        return self._count
