"""The mesh guard's Linkerd rules: the weak spots of Server, AuthorizationPolicy and
MeshTLSAuthentication objects (policy.linkerd.io) and of Linkerd's inject annotation on
Namespaces and Pods (docs/mesh-guard.md). Pure functions of one object state and the guard's
`Scope`; the controller diffs two states (meshward.core.meshguard.diff).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshward.core import templates
from meshward.core.exports import caller_account
from meshward.core.meshguard import (
    Grant,
    Learned,
    Obj,
    Operation,
    PathPattern,
    Scope,
    Source,
    State,
    Strength,
    Weakness,
    items,
    mapping,
    short,
    template_pattern,
    wider_than_learned,
)
from meshward.core.threats.names import MESH_INJECTION_DISABLED, MESH_POLICY_WIDENED
from meshward.linkerd.pods import linkerd_identity
from meshward.linkerd.policyexport import path_match

PROXY_CONTAINER = "linkerd-proxy"
INJECT = "linkerd.io/inject"
SKIP_INBOUND = "config.linkerd.io/skip-inbound-ports"
POD_KEYS = (INJECT, SKIP_INBOUND)  # what the pod rules read
# a Server's default for traffic no AuthorizationPolicy matches: these let in callers without a
# mesh identity (audit: everything, only logged; counted in enforce namespaces only)
OPEN_ACCESS = ("all-unauthenticated", "cluster-unauthenticated", "audit")


def _ns(obj: Obj) -> str:
    return str(mapping(obj.get("metadata")).get("namespace") or "")


def server(obj: Obj, scope: Scope) -> State:
    """A Server whose default access policy lets unauthenticated callers in."""
    affects = scope.affects(_ns(obj))
    if not affects:
        return State()
    policy = str(mapping(obj.get("spec")).get("accessPolicy") or "")
    if policy == "audit" and _ns(obj) not in scope.enforcing:
        # monitor: meshward itself only watches there, and its own Linkerd export writes audit
        return State((), (), affects)
    if policy in OPEN_ACCESS:
        detail = "callers without a mesh identity reach the port"
        weak = Weakness(MESH_POLICY_WIDENED, "spec.accessPolicy", policy, detail)
        return State((weak,), (), affects)
    return State((), (), affects)


def authorization_policy(obj: Obj, scope: Scope) -> State:
    """An AuthorizationPolicy that requires no authentication (an empty
    requiredAuthenticationRefs) or only a network one (NetworkAuthentication: no identity)."""
    affects = scope.affects(_ns(obj))
    if not affects:
        return State()
    refs = mapping(obj.get("spec")).get("requiredAuthenticationRefs")
    weak = []
    if isinstance(refs, list) and not refs:
        weak.append(
            Weakness(
                MESH_POLICY_WIDENED,
                "spec.requiredAuthenticationRefs",
                "[]",
                "any caller, authenticated or not",
            )
        )
    for i, ref in enumerate(refs if isinstance(refs, list) else []):
        if mapping(ref).get("kind") == "NetworkAuthentication":
            weak.append(
                Weakness(
                    MESH_POLICY_WIDENED,
                    f"spec.requiredAuthenticationRefs[{i}]",
                    short(ref),
                    "callers are authorized by network, without a mesh identity",
                )
            )
    learned = scope.learned
    if learned is not None:
        weak = _against_learned(obj, scope, learned, weak)
    return State(tuple(weak), (), affects)


def _against_learned(
    obj: Obj, scope: Scope, learned: Learned, weak: list[Weakness]
) -> list[Weakness]:
    """What the policy admits beyond the learned allowlist of the workload its target
    serves (docs/mesh-guard.md): callers from its MeshTLSAuthentications and ServiceAccount
    refs, methods and paths from its HTTPRoute's matches (a Server target: any request on
    the port). Findings land on the policy's `spec.requiredAuthenticationRefs[i]` (callers)
    and `spec.targetRef` (requests)."""
    ns, spec = _ns(obj), mapping(obj.get("spec"))
    note = learned.not_compared()
    target = _target(ns, mapping(spec.get("targetRef")), scope)
    if not note and target is None:
        note = (
            "not compared with the learned allowlist: its target is no Server or HTTPRoute "
            f"the guard holds whose podSelector has a {learned.selector_label} label"
        )
    if note:
        return [Weakness(w.threat, w.field, w.value, f"{w.detail}; {note}") for w in weak]
    assert target is not None
    destination, route = target
    learnt = learned.learnt(destination, "linkerd", template_pattern)
    named = {c: _identity(c, learned.trust_domain) for c in sorted(learnt.callers)}
    sources: list[Source] = []
    for i, ref in enumerate(items(spec.get("requiredAuthenticationRefs"))):
        sources += _sources(mapping(ref), f"spec.requiredAuthenticationRefs[{i}]", ns, scope, named)
    if not sources:
        return weak  # no identity required, or none the guard can resolve: the universal rules
    exported = {}  # the regular expressions the export writes for the learned templates
    for _, pattern, _ in learnt.calls:
        match = path_match(pattern.text)
        if match is not None and match["type"] == "RegularExpression":
            exported[match["value"]] = pattern
    operations = None if route is None else tuple(_operations(route, exported))
    names = {c: i for c, i in named.items() if i}
    grant = Grant("spec", tuple(sources), operations, "spec.targetRef", names)
    told = {w.field for w in weak}
    found: dict[str, Weakness] = {}
    for w in wider_than_learned(grant, destination, learnt):
        where = w.field if w.field.startswith("spec.required") else "spec.targetRef"
        if where in told:
            continue
        if where in found:
            had = found[where]
            found[where] = Weakness(had.threat, where, had.value, f"{had.detail}; {w.detail}")
        else:
            value = short(spec.get("targetRef")) if where == "spec.targetRef" else w.value
            found[where] = Weakness(w.threat, where, value, w.detail)
    return [*weak, *found.values()]


def _target(ns: str, ref: Mapping[str, Any], scope: Scope) -> tuple[str, Obj | None] | None:
    """The learned destination a policy's target serves, and its HTTPRoute (None: a Server
    target); None when the guard cannot tell."""
    learned, lookup = scope.learned, scope.refs
    if learned is None or lookup is None:
        return None
    kind, name = str(ref.get("kind") or ""), str(ref.get("name") or "")
    route = None
    if kind == "HTTPRoute":
        route = lookup("HTTPRoute", ns, name)
        parents = [mapping(p) for p in items(mapping((route or {}).get("spec")).get("parentRefs"))]
        servers = [p for p in parents if str(p.get("kind") or "Server") == "Server"]
        if route is None or len(servers) != 1:
            return None
        name = str(servers[0].get("name") or "")
    elif kind != "Server":
        return None
    server = lookup("Server", ns, name)
    selector = mapping(mapping(mapping((server or {}).get("spec")).get("podSelector")))
    workload = mapping(selector.get("matchLabels")).get(learned.selector_label)
    if not isinstance(workload, str) or not workload:
        return None
    return f"{ns}/{workload}", route


def _sources(
    ref: Mapping[str, Any], at: str, ns: str, scope: Scope, named: Mapping[str, str | None]
) -> list[Source]:
    """The callers one authentication ref admits: a MeshTLSAuthentication's identities and
    identityRefs, or a ServiceAccount; a NetworkAuthentication is the universal rules'."""
    kind, name = str(ref.get("kind") or ""), str(ref.get("name") or "")
    where = str(ref.get("namespace") or ns)
    if kind == "ServiceAccount":
        return [Source(at, f"{where}/{name}", "service account", frozenset({f"{where}/{name}"}))]
    if kind != "MeshTLSAuthentication" or scope.refs is None:
        return []
    authn = scope.refs("MeshTLSAuthentication", where, name)
    spec = mapping((authn or {}).get("spec"))
    out = []
    for value in items(spec.get("identities")):
        if isinstance(value, str):
            hits = frozenset(c for c, i in named.items() if i and identity_match(value, i))
            out.append(Source(at, value, "identity", hits))
    for sa in items(spec.get("identityRefs")):
        sa = mapping(sa)
        if str(sa.get("kind") or "") == "ServiceAccount":
            key = f"{sa.get('namespace') or where}/{sa.get('name') or ''}"
            out.append(Source(at, key, "service account", frozenset({key})))
        elif str(sa.get("kind") or "") == "Namespace":
            value = str(sa.get("name") or "")
            hits = frozenset(c for c in named if c.partition("/")[0] == value)
            out.append(Source(at, value, "namespace", hits))
    return out


def _identity(caller: str, trust_domain: str) -> str | None:
    account = caller_account(caller)
    return linkerd_identity(account.name, account.namespace, trust_domain) if account else None


def identity_match(pattern: str, identity: str) -> bool:
    """Linkerd's identity match: exact, `*` (any), or a `*.suffix` for a whole domain."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return identity.endswith(pattern[1:])
    return identity == pattern


def _operations(route: Obj, exported: Mapping[str, PathPattern]) -> list[Operation]:
    """An HTTPRoute's matches (a method and a path each; ORed), as operations."""
    out = []
    for i, rule in enumerate(items(mapping(route.get("spec")).get("rules"))):
        matches = items(mapping(rule).get("matches")) or [{}]
        for j, match in enumerate(matches):
            match = mapping(match)
            method = match.get("method")
            path = mapping(match.get("path"))
            out.append(
                Operation(
                    f"HTTPRoute rules[{i}].matches[{j}]",
                    (method.upper(),) if isinstance(method, str) and method else None,
                    (route_path(path, exported),) if path else None,
                )
            )
    return out


def route_path(match: Mapping[str, Any], exported: Mapping[str, PathPattern]) -> PathPattern:
    """The paths an HTTPRoute path match admits: Exact, PathPrefix (whole segments), or a
    RegularExpression: the learned template the export wrote it for, else any path (a regular
    expression the guard cannot bound)."""
    kind, value = str(match.get("type") or "PathPrefix"), str(match.get("value") or "/")
    if kind == "Exact":
        return PathPattern(tuple(templates.split_path(value)), False, value)
    if kind == "RegularExpression":
        known = exported.get(value)
        return (
            PathPattern(known.segments, known.rest, value)
            if known
            else PathPattern((), True, value)
        )
    return PathPattern(tuple(templates.split_path(value.rstrip("/") or "/")), True, value)


def http_route(obj: Obj, scope: Scope) -> State:
    """An HTTPRoute weakens nothing by itself: the guard holds it for the AuthorizationPolicies
    that target it (wider than learned)."""
    return State()


def meshtls_authentication(obj: Obj, scope: Scope) -> State:
    """A MeshTLSAuthentication that accepts any identity (`*`, or a wildcard)."""
    affects = scope.affects(_ns(obj))
    if not affects:
        return State()
    ids = mapping(obj.get("spec")).get("identities")
    weak = []
    if isinstance(ids, list) and any(isinstance(i, str) and i.startswith("*") for i in ids):
        detail = "any meshed identity is accepted"
        weak.append(Weakness(MESH_POLICY_WIDENED, "spec.identities", short(ids), detail))
    return State(tuple(weak), (), affects)


def namespace_injection(obj: Obj) -> State:
    """`linkerd.io/inject: disabled` on a watched namespace (`enabled` is a strength), and
    inbound ports skipped by its pods' proxies."""
    annotations = mapping(mapping(obj.get("metadata")).get("annotations"))
    value = str(annotations.get(INJECT, ""))
    field = f"metadata.annotations[{INJECT}]"
    weak, strong = [], []
    if value == "disabled":
        detail = "new pods start without linkerd-proxy: the node tap sees no mesh traffic there"
        weak.append(Weakness(MESH_INJECTION_DISABLED, field, value, detail))
    elif value in ("enabled", "ingress"):
        strong.append(Strength(MESH_INJECTION_DISABLED, field, value, "injection removed"))
    weak += _skipped(annotations)
    return State(tuple(weak), tuple(strong))


def pod_injection(obj: Obj) -> list[Weakness]:
    """`linkerd.io/inject: disabled` on a pod, or inbound ports its proxy skips."""
    annotations = mapping(mapping(obj.get("metadata")).get("annotations"))
    out = _skipped(annotations)
    if annotations.get(INJECT) == "disabled":
        field = f"metadata.annotations[{INJECT}]"
        out.insert(
            0, Weakness(MESH_INJECTION_DISABLED, field, "disabled", "this pod runs unmeshed")
        )
    return out


def _skipped(annotations: Mapping[str, Any]) -> list[Weakness]:
    ports = str(annotations.get(SKIP_INBOUND, "")).strip()
    if not ports:
        return []
    field = f"metadata.annotations[{SKIP_INBOUND}]"
    detail = "requests to these ports reach the app around linkerd-proxy"
    return [Weakness(MESH_INJECTION_DISABLED, field, short(ports), detail)]
