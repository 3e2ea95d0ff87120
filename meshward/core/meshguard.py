"""The mesh guard's logic, pure: which changes of the mesh's configuration weaken a namespace.

A rule looks at one state of one object and names its weak spots (`Weakness`: the threat, the
field, the value there). A change is the difference of two states: a weak spot the new state has
and the old one had not (or had with another value) is a finding; one the old state had and the
new one lost is a finding cleared. A few changes are weakenings by what they remove, not by what
they leave (a DENY policy deleted, STRICT mTLS deleted): rules name those as `Strength`s, and
losing one is a finding too. Who made the change is read from the object's `managedFields`
(`changed_by`), which is all the API itself records; a deletion has no author there. The user
comes from the API server's audit log where one is configured (meshward.core.kubeaudit).

No I/O: the controller (meshward.app.meshguard) feeds objects in and writes Events and alerts.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshward.core import templates
from meshward.core.exports import rule_callers, rule_methods
from meshward.core.labels import MODE_LABEL
from meshward.core.threats.names import (
    MESH_FILTER_TAMPERED,
    MESH_INJECTION_DISABLED,
    MESH_MTLS_WEAKENED,
    MESH_POLICY_WIDENED,
    MESH_UNMESHED_POD,
)

# the findings of the configuration guard (the node tap reports the other two mesh threats)
CONFIG_THREATS: tuple[str, ...] = (
    MESH_MTLS_WEAKENED,
    MESH_FILTER_TAMPERED,
    MESH_INJECTION_DISABLED,
    MESH_UNMESHED_POD,
    MESH_POLICY_WIDENED,
)
Obj = Mapping[str, Any]
GUARDED_MODES = ("monitor", "enforce")  # learn: onboarding, everything is allowed anyway
DELETED = "(deleted)"
ABSENT = "(unset)"
MAX_VALUE = 200  # characters of a value shown in a finding


def mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one: rules read objects of any shape (a CRD's
    schema is the API server's to enforce, and 1.20 drops Istio's CEL rules)."""
    return value if isinstance(value, Mapping) else {}


def items(value: Any) -> list[Any]:
    """`value` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def _text(value: Any, name: str, most: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    if len(value) > most or not value.isprintable():
        raise ValueError(f"{name} must be at most {most} printable characters")
    return value


def guarded(labels: Mapping[str, str]) -> bool:
    """Does the guard watch this namespace (its meshward.io/mode is monitor or enforce)?"""
    return labels.get(MODE_LABEL) in GUARDED_MODES


@dataclass(frozen=True)
class Scope:
    """Which namespaces the guard watches now, and Istio's root namespace (its mesh-wide
    objects weaken every watched namespace)."""

    watched: frozenset[str] = frozenset()
    root: str = "istio-system"
    enforcing: frozenset[str] = frozenset()  # those of them in enforce
    # the learned allowlists ALLOW policies are compared with (None: no comparison asked)
    learned: Learned | None = None
    # the guarded objects a policy refers to, by kind, namespace and name (Linkerd: a
    # policy's Server, HTTPRoute, MeshTLSAuthentication)
    refs: Callable[[str, str, str], Obj | None] | None = None

    def affects(self, namespace: str, mesh_wide: bool = False) -> tuple[str, ...]:
        """The watched namespaces an object in `namespace` weakens (none: not guarded)."""
        if namespace == self.root and mesh_wide:
            return tuple(sorted(self.watched))
        return (namespace,) if namespace in self.watched else ()


@dataclass(frozen=True)
class Weakness:
    """One weak spot of one object state: `field` (a dotted path) holds `value`."""

    threat: str
    field: str
    value: str
    detail: str = ""  # what it means, one short sentence


@dataclass(frozen=True)
class Finding:
    """One change of one object that weakened (or, `cleared`, stopped weakening) the mesh."""

    threat: str
    kind: str
    namespace: str  # the object's namespace ("" for a cluster-scoped object)
    name: str
    field: str
    old: str
    new: str
    by: str  # who changed it, as the API tells (see changed_by)
    detail: str = ""
    cleared: bool = False
    affects: tuple[str, ...] = ()  # the watched namespaces it weakens
    uid: str = ""
    api_version: str = ""
    # who made it, from the API server's audit log (meshward.core.kubeaudit), when configured:
    # the user (`alice`, `admin as carol`) and the rest of the record in one line
    user: str = ""
    user_detail: str = ""

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.kind, self.namespace, self.name, self.field, self.new)

    def as_dict(self) -> dict[str, Any]:
        """The JSON the controller sends to serve (POST /api/v1/findings)."""
        doc = dataclasses.asdict(self)
        doc["affects"] = list(self.affects)
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> Finding:
        """A finding sent over the API, checked: every field a short printable string, the
        threat one of the guard's (ValueError otherwise)."""
        if not isinstance(doc, Mapping):
            raise ValueError("a finding is a JSON object")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = doc.get(f.name, f.default)
            if f.name == "cleared":
                if not isinstance(raw, bool):
                    raise ValueError("cleared must be true or false")
                values[f.name] = raw
            elif f.name == "affects":
                if not isinstance(raw, (list, tuple)) or len(raw) > 10_000:
                    raise ValueError("affects must be a list of namespaces")
                values[f.name] = tuple(_text(v, "affects", 63) for v in raw)
            else:
                longest = 1000 if f.name in ("by", "user_detail") else MAX_VALUE + 100
                values[f.name] = _text(raw, f.name, longest)
        if values["threat"] not in CONFIG_THREATS:
            raise ValueError(f"threat must be one of {', '.join(CONFIG_THREATS)}")
        if not values["kind"] or not values["name"] or not values["field"]:
            raise ValueError("kind, name and field must be given")
        return cls(**values)

    def message(self) -> str:
        """The one line an Event and a log carry."""
        where = f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"
        if self.cleared:
            text = f"{self.threat} cleared: {where} {self.field}: {self.old} -> {self.new}"
        else:
            text = f"{where} {self.field}: {self.old} -> {self.new}"
        if self.detail and not self.cleared:
            text += f" ({self.detail})"
        if self.affects:
            text += f"; affects namespaces {', '.join(self.affects[:10])}"
            if len(self.affects) > 10:
                text += f" and {len(self.affects) - 10} more"
        text = f"{text}; changed by {self.by}"
        if self.user_detail:  # the audit log's word: the user, or why it names nobody
            text += f"; user {self.user_detail}"
        return text


@dataclass(frozen=True)
class Strength:
    """A field whose loss (object deleted, value changed) weakens the mesh: a DENY policy,
    STRICT mTLS."""

    threat: str
    field: str
    value: str
    detail: str = ""


@dataclass(frozen=True)
class State:
    """What the rules say of one object state."""

    weak: tuple[Weakness, ...] = ()
    strong: tuple[Strength, ...] = ()
    affects: tuple[str, ...] = ()


def value_at(obj: Obj | None, path: str) -> str:
    """The value at a dotted path (`spec.mtls.mode`, `spec.rules[0]`), shown short."""
    if obj is None:
        return DELETED
    node: Any = obj
    for part in _parts(path):
        if isinstance(part, int) and isinstance(node, list):
            node = node[part] if part < len(node) else None
        elif isinstance(part, int):  # a map keyed by a number: portLevelMtls[8080]
            node = node.get(str(part)) if isinstance(node, Mapping) else None
        else:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            return ABSENT
    return short(node)


def short(value: Any) -> str:
    """A value as one short line."""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def one_line(text: str, most: int = MAX_VALUE + 90) -> str:
    """A finding's detail as serve takes it (Finding.from_dict): printable ASCII, bounded. A
    detail may quote what a policy holds (a principal, a path), which anyone may write."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= most else clean[: most - 3] + "..."


_PART = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


def _parts(path: str) -> list[str | int]:
    """`spec.rules[0].from` -> spec, rules, 0, from; `metadata.labels[istio.io/rev]` keeps the
    bracketed key whole."""
    out: list[str | int] = []
    for m in _PART.finditer(path):
        if m[1] is not None:
            out.append(m[1])
        else:
            out.append(int(m[2]) if m[2].isdigit() else m[2])
    return out


def changed_by(obj: Obj | None, path: str) -> str:
    """Who last set the field at `path`, from `metadata.managedFields`: the manager owning the
    deepest part of the path (the latest of them when several do), with its operation and
    time; when nobody owns it (a field removed leaves no owner), the object's latest operation,
    said as such. The API keeps no author of a deletion."""
    if obj is None:
        return "unknown (a deletion has no field manager; the audit log names who)"
    entries = [e for e in items(mapping(obj.get("metadata")).get("managedFields")) if _entry_ok(e)]
    if not entries:
        return "unknown (no managedFields)"
    keys = _parts(path)
    owners = [(depth, e) for e in entries if (depth := _owned_depth(e, keys)) > 0]
    if owners:
        deepest = max(d for d, _ in owners)
        best = max((e for d, e in owners if d == deepest), key=_when)
        return _describe(best)
    latest = max(entries, key=_when)
    return f"{_describe(latest)}, the latest operation (the field has no owner left)"


def _entry_ok(e: Any) -> bool:
    return isinstance(e, Mapping) and isinstance(e.get("manager"), str)


def _when(e: Mapping[str, Any]) -> str:
    return str(e.get("time") or "")


def _describe(e: Mapping[str, Any]) -> str:
    manager = short(e.get("manager") or "unknown")[:128]
    op = short(e.get("operation") or "")[:16]
    return f"{manager} ({op} {short(e.get('time') or '')[:32]})".replace(" )", ")")


def _owned_depth(entry: Mapping[str, Any], keys: list[str | int]) -> int:
    """How deep along `keys` the entry's fieldsV1 owns (0: not at all). An atomic value (a list
    without list-type, a scalar) is owned whole, so owning a key owns what is under it; a list
    index the entry does not spell as `f:N` (lists of items keyed `k:`/`i:`) counts as owned by
    whoever owns part of the list."""
    node = entry.get("fieldsV1")
    depth = 0
    for key in keys:
        if not isinstance(node, Mapping):
            return 0
        nxt = node.get(f"f:{key}")
        if nxt is None:
            if isinstance(key, int) and depth:
                return depth
            return depth if depth and not node else 0
        node, depth = nxt, depth + 1
    return depth


def diff(
    kind: str,
    old: Obj | None,
    new: Obj | None,
    old_state: State,
    new_state: State,
    old_label: str | None = None,
) -> list[Finding]:
    """The findings of one change from `old` to `new` (either None: created, deleted).
    `old_label` replaces the old value of a new weakness when the old state is unknown (found
    at start) or was not guarded (the namespace just became monitor or enforce)."""
    meta = mapping((new if new is not None else old or {}).get("metadata"))
    base: dict[str, Any] = dict(
        kind=kind,
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        api_version=str((new or old or {}).get("apiVersion") or ""),
    )
    out: list[Finding] = []
    before = {(w.threat, w.field): w for w in old_state.weak}
    after = {(w.threat, w.field): w for w in new_state.weak}
    for key, w in after.items():
        was = before.get(key)
        if was is not None and was.value == w.value:
            continue
        if old_label is not None:
            old_value = old_label
        else:
            old_value = value_at(old, w.field) if old is not None else ABSENT
        out.append(
            Finding(
                w.threat,
                field=w.field,
                old=old_value,
                new=w.value,
                by=changed_by(new, w.field),
                detail=one_line(w.detail),
                affects=new_state.affects,
                **base,
            )
        )
    for key, w in before.items():
        if key not in after:
            out.append(_cleared(w.threat, w.field, w.value, new, old_state, base))
    had = {(s.threat, s.field, s.value) for s in old_state.strong}
    kept = {(s.threat, s.field, s.value) for s in new_state.strong}
    told = {(f.threat, f.field) for f in out}  # a weakness in the same field says it already
    for s in old_state.strong:
        if (s.threat, s.field, s.value) in kept or (s.threat, s.field) in told:
            continue
        out.append(
            Finding(
                s.threat,
                field=s.field,
                old=s.value,
                new=value_at(new, s.field),
                by=changed_by(new, s.field),
                detail=one_line(s.detail),
                affects=old_state.affects,
                **base,
            )
        )
    for s in new_state.strong:  # a strength back: clears its loss, if that was reported
        if (s.threat, s.field, s.value) not in had and (s.threat, s.field) not in told:
            out.append(_cleared(s.threat, s.field, value_at(old, s.field), new, new_state, base))
    return out


def _cleared(
    threat: str, path: str, old: str, new: Obj | None, state: State, base: dict[str, Any]
) -> Finding:
    return Finding(
        threat,
        field=path,
        old=old,
        new=value_at(new, path),
        by=changed_by(new, path),
        cleared=True,
        affects=state.affects,
        **base,
    )


@dataclass
class Reported:
    """Findings already reported, so the same object+field+value is not reported twice (a
    relist, a resync, an unrelated edit of the same object); bounded, oldest forgotten. A
    cleared finding forgets its weakness, so a later relapse is reported again."""

    size: int = 10_000
    _seen: OrderedDict[tuple[str, ...], None] = field(default_factory=OrderedDict)
    suppressed: int = 0

    def fresh(self, findings: Iterable[Finding]) -> list[Finding]:
        out = []
        for f in findings:
            key = (f.threat, *f.key[:4])
            if f.cleared:
                stale = [k for k in self._seen if k[:5] == key]
                if not stale:
                    self.suppressed += 1
                    continue  # never reported (e.g. before a restart): nothing to clear
                for k in stale:
                    del self._seen[k]
                out.append(f)
                continue
            full = (*key, f.new)
            if full in self._seen:
                self.suppressed += 1
                self._seen.move_to_end(full)
                continue
            self._seen[full] = None
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
            out.append(f)
        return out

    def forget(self, f: Finding) -> None:
        """Forget what was reported of this object's field (it is no longer guarded)."""
        key = (f.threat, *f.key[:4])
        for k in [k for k in self._seen if k[:5] == key]:
            del self._seen[k]

    def __len__(self) -> int:
        return len(self._seen)


# ---- wider than learned: an ALLOW policy against the learned allowlist of what it selects
#
# A mesh's rule module (meshward.istio.guard, meshward.linkerd.guard) resolves each ALLOW rule of a
# policy into a `Grant` (who, which methods, which paths, in neutral form) for each workload the
# policy selects; `wider_than_learned` names what the grant admits that the workload's learned
# allowlist does not. Paths are compared at the mesh's granularity: a learned template is what
# the export writes for it (meshward.istio.authzexport, meshward.linkerd.policyexport: a
# variable is one segment, `{any}` the rest), since value classes stay with meshward anyway.

ONE = "{*}"  # a neutral path segment: any one non-empty segment
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
MAX_NAMED = 5  # entries a finding's detail names; the rest are counted


@dataclass(frozen=True)
class PathPattern:
    """A set of paths: `segments` (literals, or ONE), then, with `rest`, anything (zero or
    more further segments). `text` is the pattern as the policy or export wrote it."""

    segments: tuple[str, ...]
    rest: bool = False
    text: str = ""

    def covers(self, other: PathPattern) -> bool:
        """Does every path `other` admits match this pattern? (Exact for these patterns: a
        union of them covers a pattern only if one of them does, since ONE and `rest` are
        infinite and literals are not.)"""
        mine, theirs = self.segments, other.segments
        if other.rest and not self.rest:
            return False
        if len(mine) > len(theirs) or (len(mine) < len(theirs) and not self.rest):
            return False
        for want, have in zip(mine, theirs, strict=False):
            if want == ONE:
                if have == "":
                    return False
            elif want != have:
                return False
        return True


ANY_PATH = PathPattern((), True, "(any path)")


def template_pattern(template: str) -> PathPattern:
    """A learned template as the mesh can say it: a variable is one segment, `{any}` the rest
    (as the exports write `{*}` and `{**}`)."""
    segments = templates.split_path(template)
    rest = bool(segments) and segments[-1] == templates.REST
    body = segments[:-1] if rest else segments
    out = tuple(ONE if templates.is_variable(s) else s for s in body)
    return PathPattern(out, rest, template)


@dataclass(frozen=True)
class Source:
    """One entry of a rule's sources (a principal, a namespace, an identity, "no identity"):
    `field` and `value` as the policy writes them, `callers` the learned caller keys
    (meshward.core.exports: `namespace/account`, or `unknown`) it admits."""

    field: str
    value: str
    what: str  # "principal", "namespace", "identity", ...
    callers: frozenset[str]


@dataclass(frozen=True)
class Operation:
    """One operation of a rule: methods (None: any) and paths (None: any)."""

    field: str
    methods: tuple[str, ...] | None
    paths: tuple[PathPattern, ...] | None


@dataclass(frozen=True)
class Grant:
    """One ALLOW rule resolved for one workload: its sources (None: any caller, which the
    universal rules report) and its operations (None: any method on any path)."""

    field: str
    sources: tuple[Source, ...] | None
    operations: tuple[Operation, ...] | None
    operations_field: str = ""  # where `operations` would be written (Istio's `to`)
    names: Mapping[str, str] = dataclasses.field(
        default_factory=dict
    )  # caller key -> as the mesh names it


@dataclass(frozen=True)
class Learnt:
    """What one workload learned, as a mesh can say it: (method, path, callers) per rule, its
    callers and methods (HEAD with GET); `known` False when nothing was learned for it."""

    calls: tuple[tuple[str, PathPattern, frozenset[str]], ...] = ()
    callers: frozenset[str] = frozenset()
    methods: frozenset[str] = frozenset()
    known: bool = False
    # (method, path as written) -> its callers: a policy path written as the export writes a
    # learned one (the usual, benign case) is found without comparing patterns
    written: Mapping[tuple[str, str], frozenset[str]] = dataclasses.field(default_factory=dict)
    texts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, profile: Any, learned_path: Callable[[str], PathPattern | None]) -> Learnt:
        """From a ServiceProfile (None: nothing learned); `learned_path` writes a template as
        the mesh's export does (None: the mesh cannot say it, left out)."""
        if profile is None:
            return cls()
        calls = []
        for rule in profile.rules():
            pattern = learned_path(rule.template)
            if pattern is not None:
                calls.append((rule.method, pattern, frozenset(rule_callers(profile, rule))))
        methods = {a for m, _, _ in calls for a in rule_methods(m)}  # a GET rule admits HEAD
        written: dict[tuple[str, str], frozenset[str]] = {}
        for m, p, c in calls:
            written[(m, p.text)] = written.get((m, p.text), frozenset()) | c
        texts = frozenset(p.text for _, p, _ in calls)
        sources = frozenset(profile.sources)
        return cls(tuple(calls), sources, frozenset(methods), True, written, texts)


@dataclass(frozen=True, eq=False)
class Learned:
    """The learned allowlists the guard compares ALLOW policies with (as serve had them at
    the last read), or why the comparison cannot be made (`missing`)."""

    allowlist: Any = None  # meshward.core.allowlist.Allowlist
    missing: str = ""
    trust_domain: str = "cluster.local"
    selector_label: str = "app"
    # (destination, mesh) -> what it learned, as that mesh says it: made once per copy
    _learnt: dict[tuple[str, str], Learnt] = dataclasses.field(default_factory=dict, repr=False)

    def destinations(self, namespace: str) -> list[str]:
        """The learned destinations of a namespace (a policy without a selector covers them)."""
        if self.allowlist is None:
            return []
        return sorted(k for k in self.allowlist.services if k.partition("/")[0] == namespace)

    def learnt(
        self, destination: str, mesh: str, learned_path: Callable[[str], PathPattern | None]
    ) -> Learnt:
        """What `destination` learned, as `mesh` writes it (cached with this copy)."""
        key = (destination, mesh)
        found = self._learnt.get(key)
        if found is None:
            profile = self.allowlist.get(destination) if self.allowlist is not None else None
            found = self._learnt[key] = Learnt.of(profile, learned_path)
        return found

    def not_compared(self) -> str:
        """The note a policy finding carries when no comparison was made ("" when it was)."""
        if self.allowlist is not None:
            return ""
        return f"not compared with the learned allowlist: {self.missing or 'not read'}"


def wider_than_learned(grant: Grant, destination: str, learnt: Learnt) -> list[Weakness]:
    """What `grant` admits to `destination` that its learned allowlist does not: a caller
    entry matching no learned caller, a method never learned, a path no learned template
    covers, or a request whose caller, method and path were each learned but never together.
    One Weakness per field (the universal rules' fields are the caller's to drop)."""
    calls, seen_callers, learned_methods = learnt.calls, learnt.callers, learnt.methods
    nothing = "" if learnt.known else f"; nothing learned for {destination}"
    out: list[Weakness] = []
    by_field: dict[str, list[Source]] = {}
    for s in grant.sources or ():
        if not s.callers & seen_callers:
            by_field.setdefault(s.field, []).append(s)
    for where, wide in by_field.items():
        named = _named(f"{s.what} {s.value}" for s in wide)
        detail = f"allows {named}, never seen calling {destination}{nothing}"
        whole = [s.value for s in grant.sources or () if s.field == where]  # as the policy has it
        out.append(Weakness(MESH_POLICY_WIDENED, where, short(whole), detail))
    if grant.sources is None:
        callers = seen_callers
    else:
        callers = frozenset().union(*(s.callers & seen_callers for s in grant.sources))
    operations = grant.operations
    if operations is None:
        operations = (Operation(grant.operations_field or grant.field, None, None),)
    for op in operations:
        methods = op.methods if op.methods is not None else HTTP_METHODS
        paths = op.paths if op.paths is not None else (ANY_PATH,)
        told = False
        if op.methods is None and op.paths is None and set(HTTP_METHODS) - learned_methods:
            detail = f"allows any method on any path of {destination}{nothing}"
            out.append(Weakness(MESH_POLICY_WIDENED, op.field, "(any operation)", detail))
            continue
        new_methods = [m for m in methods if m not in learned_methods]
        if new_methods:
            what = "any method" if op.methods is None else f"method {_named(new_methods)}"
            detail = f"allows {what}, never learned for {destination}{nothing}"
            value = short(list(op.methods)) if op.methods is not None else "(any method)"
            out.append(Weakness(MESH_POLICY_WIDENED, f"{op.field}.methods", value, detail))
            told = True
        uncovered = [
            p
            for p in paths
            if p.text not in learnt.texts and not any(c.covers(p) for _, c, _ in calls)
        ]
        if uncovered:
            detail = f"allows paths {_named(p.text for p in uncovered)}, no learned template "
            detail += f"of {destination} covers {'it' if len(uncovered) == 1 else 'them'}"
            value = short([p.text for p in op.paths]) if op.paths is not None else "(any path)"
            out.append(Weakness(MESH_POLICY_WIDENED, f"{op.field}.paths", value, detail + nothing))
            told = True
        if told:
            continue
        missing = _not_together(callers, methods, paths, learnt)
        if missing:
            caller, method, one = missing
            who = grant.names.get(caller, caller)
            detail = f"allows {who} {method} {one.text}, never learned together for {destination}"
            out.append(Weakness(MESH_POLICY_WIDENED, op.field, short(_op_doc(op)), detail))
    return out


def _not_together(
    callers: frozenset[str],
    methods: Iterable[str],
    paths: Iterable[PathPattern],
    learnt: Learnt,
) -> tuple[str, str, PathPattern] | None:
    """The first (caller, method, path) the operation admits and no one learned rule has."""
    for method in methods:
        learned = "GET" if method == "HEAD" else method  # HEAD is GET without a body
        for path in paths:
            written = learnt.written
            direct = written.get((method, path.text), frozenset())
            if callers <= direct | written.get((learned, path.text), frozenset()):
                continue  # written as a learned rule is, by the same callers
            allowed = frozenset().union(
                *(c for m, p, c in learnt.calls if m in (method, learned) and p.covers(path))
            )
            for caller in sorted(callers - allowed)[:1]:
                return caller, method, path
    return None


def _named(values: Iterable[str]) -> str:
    listed = list(values)
    shown = ", ".join(listed[:MAX_NAMED])
    return shown + (f" and {len(listed) - MAX_NAMED} more" if len(listed) > MAX_NAMED else "")


def _op_doc(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if op.methods is not None:
        doc["methods"] = list(op.methods)
    if op.paths is not None:
        doc["paths"] = [p.text for p in op.paths]
    return doc
