"""The mesh guard's Istio rules: the weak spots of PeerAuthentication, DestinationRule, Sidecar,
AuthorizationPolicy and EnvoyFilter objects, and of Istio's injection labels on Namespaces and
Pods (docs/mesh-guard.md). Pure functions of one object state and the guard's `Scope`; the
controller diffs two states (meshward.core.meshguard.diff).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from meshward.core import templates
from meshward.core.exports import UNAUTHENTICATED, caller_account
from meshward.core.meshguard import (
    ONE,
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
    wider_than_learned,
)
from meshward.core.threats.names import (
    MESH_FILTER_TAMPERED,
    MESH_INJECTION_DISABLED,
    MESH_MTLS_WEAKENED,
    MESH_POLICY_WIDENED,
)
from meshward.istio.authzexport import istio_path, principal
from meshward.istio.filters import EXT_AUTHZ, EXT_PROC

PROXY_CONTAINER = "istio-proxy"
WEAK_MTLS = ("PERMISSIVE", "DISABLE")
GUARDED_FILTERS = (EXT_AUTHZ, EXT_PROC, "envoy.filters.http.tap")
# the listener parts meshward's filters sit on: removing or replacing them drops the filters
LISTENER_PARTS = ("LISTENER", "FILTER_CHAIN", "NETWORK_FILTER")
INBOUND_CONTEXTS = ("SIDECAR_INBOUND", "ANY", "")
INJECT_LABEL = "istio-injection"
REV_LABEL = "istio.io/rev"
POD_INJECT = "sidecar.istio.io/inject"
EXCLUDE_INBOUND = "traffic.sidecar.istio.io/excludeInboundPorts"
INCLUDE_INBOUND = "traffic.sidecar.istio.io/includeInboundPorts"
POD_KEYS = (POD_INJECT, EXCLUDE_INBOUND, INCLUDE_INBOUND)  # what the pod rules read


def _spec(obj: Obj) -> Mapping[str, Any]:
    return mapping(obj.get("spec"))


def _ns(obj: Obj) -> str:
    return str(mapping(obj.get("metadata")).get("namespace") or "")


def _mesh_wide(obj: Obj) -> bool:
    """No workload selector: the object covers its whole namespace (all of them in the root)."""
    spec = _spec(obj)
    return not spec.get("selector") and not spec.get("workloadSelector")


def peer_authentication(obj: Obj, scope: Scope) -> State:
    """PERMISSIVE or DISABLE, for the whole namespace or one port; STRICT is a strength (deleted
    or unset, the namespace falls back to the mesh-wide policy, PERMISSIVE by Istio's default)."""
    affects = scope.affects(_ns(obj), _mesh_wide(obj))
    if not affects:
        return State()
    spec = _spec(obj)
    weak, strong = [], []
    mode = str(mapping(spec.get("mtls")).get("mode") or "")
    if mode in WEAK_MTLS:
        weak.append(Weakness(MESH_MTLS_WEAKENED, "spec.mtls.mode", mode, _plaintext(mode)))
    elif mode == "STRICT":
        strong.append(
            Strength(MESH_MTLS_WEAKENED, "spec.mtls.mode", mode, "mTLS no longer required")
        )
    ports = spec.get("portLevelMtls")
    if isinstance(ports, Mapping):
        for port, setting in sorted(ports.items(), key=lambda kv: str(kv[0])):
            pmode = str(mapping(setting).get("mode") or "")
            if pmode in WEAK_MTLS:
                path = f"spec.portLevelMtls[{port}].mode"
                weak.append(Weakness(MESH_MTLS_WEAKENED, path, pmode, _plaintext(pmode, port)))
    return State(tuple(weak), tuple(strong), affects)


def _plaintext(mode: str, port: object = None) -> str:
    where = f"port {port}" if port is not None else "its workloads"
    if mode == "DISABLE":
        return f"{where} take plaintext only: no mTLS, no verified identity"
    return f"{where} also take plaintext from callers without a sidecar"


def host_namespace(host: str, own: str) -> str | None:
    """The namespace of an in-cluster service host a DestinationRule names: `svc` (the rule's
    own namespace), `svc.ns`, `svc.ns.svc.<domain>`, `*.ns.svc.<domain>`; "*" for every
    namespace (`*`, `*.svc.<domain>`, `*.<domain>`); None for a host outside the cluster."""
    host = host.lower().rstrip(".")
    if host in ("*", "*.local") or host.startswith("*.svc.") or host == "*.cluster.local":
        return "*"
    parts = host.split(".")
    if len(parts) == 1:
        return own if host != "*" else "*"
    if len(parts) == 2:
        return parts[1]
    if parts[2] == "svc":
        return parts[1]
    return None


def destination_rule(obj: Obj, scope: Scope) -> State:
    """TLS mode DISABLE toward a watched service: the rule's traffic policy, its port-level
    settings and its subsets'. The caller's sidecar then sends plaintext."""
    spec = _spec(obj)
    where = host_namespace(str(spec.get("host") or ""), _ns(obj))
    if where is None:
        return State()
    affects = tuple(sorted(scope.watched)) if where == "*" else scope.affects(where)
    if not affects:
        return State()
    weak: list[Weakness] = []
    _dr_policy(spec.get("trafficPolicy"), "spec.trafficPolicy", weak)
    for i, subset in enumerate(items(spec.get("subsets"))):
        if isinstance(subset, Mapping):
            _dr_policy(subset.get("trafficPolicy"), f"spec.subsets[{i}].trafficPolicy", weak)
    return State(tuple(weak), (), affects)


def _dr_policy(policy: Any, path: str, weak: list[Weakness]) -> None:
    if not isinstance(policy, Mapping):
        return
    detail = "callers send plaintext to the service: no mTLS, no verified identity"
    if _tls_mode(policy) == "DISABLE":
        weak.append(Weakness(MESH_MTLS_WEAKENED, f"{path}.tls.mode", "DISABLE", detail))
    for i, port in enumerate(items(policy.get("portLevelSettings"))):
        if isinstance(port, Mapping) and _tls_mode(port) == "DISABLE":
            field = f"{path}.portLevelSettings[{i}].tls.mode"
            weak.append(Weakness(MESH_MTLS_WEAKENED, field, "DISABLE", detail))


def _tls_mode(policy: Mapping[str, Any]) -> str:
    tls = policy.get("tls")
    return str(tls.get("mode") or "") if isinstance(tls, Mapping) else ""


def sidecar(obj: Obj, scope: Scope) -> State:
    """An inbound listener with its own `tls` terminates TLS with its own certificate instead of
    the mesh's mTLS: that port no longer needs a mesh identity."""
    affects = scope.affects(_ns(obj), _mesh_wide(obj))
    if not affects:
        return State()
    weak = []
    for i, ingress in enumerate(items(_spec(obj).get("ingress"))):
        if not isinstance(ingress, Mapping) or not isinstance(ingress.get("tls"), Mapping):
            continue
        mode = str(ingress["tls"].get("mode") or "SIMPLE")
        detail = "the port terminates TLS itself: callers need no mesh identity"
        weak.append(Weakness(MESH_MTLS_WEAKENED, f"spec.ingress[{i}].tls.mode", mode, detail))
    return State(tuple(weak), (), affects)


def authorization_policy(obj: Obj, scope: Scope) -> State:
    """An ALLOW policy that allows all, any source or any path; a DENY policy is a strength
    (deleted, or turned into another action, its denials are gone)."""
    affects = scope.affects(_ns(obj), _mesh_wide(obj))
    if not affects:
        return State()
    spec = _spec(obj)
    action = str(spec.get("action") or "ALLOW")
    if action == "DENY":
        strength = Strength(MESH_POLICY_WIDENED, "spec.action", "DENY", "its denials are gone")
        return State((), (strength,), affects)
    if action != "ALLOW":
        return State((), (), affects)  # CUSTOM (meshward's own provider), AUDIT
    weak = []
    for i, rule in enumerate(items(spec.get("rules"))):
        if not isinstance(rule, Mapping):
            continue
        path = f"spec.rules[{i}]"
        if not rule.get("from") and not rule.get("to") and not rule.get("when"):
            weak.append(Weakness(MESH_POLICY_WIDENED, path, "{}", "allows every request"))
            continue
        if not rule.get("from"):
            detail = "any caller, with or without a mesh identity"
            weak.append(Weakness(MESH_POLICY_WIDENED, f"{path}.from", "(any source)", detail))
        for j, source in enumerate(items(rule.get("from"))):
            src = source.get("source") if isinstance(source, Mapping) else None
            for key in ("principals", "namespaces"):
                values = src.get(key) if isinstance(src, Mapping) else None
                if isinstance(values, list) and "*" in values:
                    weak.append(
                        Weakness(
                            MESH_POLICY_WIDENED,
                            f"{path}.from[{j}].source.{key}",
                            short(values),
                            f"any {key[:-1]}",
                        )
                    )
        for j, target in enumerate(items(rule.get("to"))):
            op = target.get("operation") if isinstance(target, Mapping) else None
            paths = op.get("paths") if isinstance(op, Mapping) else None
            if isinstance(paths, list) and any(p in ("*", "/*") for p in paths):
                weak.append(
                    Weakness(
                        MESH_POLICY_WIDENED,
                        f"{path}.to[{j}].operation.paths",
                        short(paths),
                        "any path",
                    )
                )
    if scope.learned is not None:
        weak = _against_learned(obj, scope.learned, affects, weak)
    return State(tuple(weak), (), affects)


def _against_learned(
    obj: Obj, learned: Learned, affects: tuple[str, ...], weak: list[Weakness]
) -> list[Weakness]:
    """The universal weak spots, then what the policy's rules admit beyond the learned
    allowlists of the workloads it selects (docs/mesh-guard.md). Without the allowlists, the
    universal findings say that no comparison was made."""
    note = learned.not_compared()
    selected = selected_destinations(obj, learned, affects)
    if not note and selected is None:
        key = learned.selector_label
        note = f"not compared with the learned allowlist: its selector names no {key} label"
    elif not note and not selected:
        note = "not compared with the learned allowlist: nothing learned where it applies"
    if note:
        return [Weakness(w.threat, w.field, w.value, f"{w.detail}; {note}") for w in weak]
    rules = items(_spec(obj).get("rules"))
    told = {w.field for w in weak}
    found: dict[str, Weakness] = {}
    more: dict[str, int] = {}
    for destination in selected or ():
        learnt = learned.learnt(destination, "istio", learned_path)
        named = {c: _principal_of(c, learned.trust_domain) for c in sorted(learnt.callers)}
        for i, rule in enumerate(rules):
            if not isinstance(rule, Mapping) or not (rule.get("from") or rule.get("to")):
                continue  # allow-all (or only `when`): the universal rule says it
            grant = istio_grant(rule, f"spec.rules[{i}]", named)
            for w in wider_than_learned(grant, destination, learnt):
                if w.field in told:
                    continue
                if w.field in found:
                    more[w.field] = more.get(w.field, 0) + 1
                else:
                    found[w.field] = w
    for path, n in more.items():
        w = found[path]
        found[path] = Weakness(w.threat, w.field, w.value, f"{w.detail} (and {n} more workloads)")
    return [*weak, *found.values()]


def selected_destinations(obj: Obj, learned: Learned, affects: tuple[str, ...]) -> list[str] | None:
    """The learned destinations (`namespace/workload`) a policy selects: its selector's
    workload label (as the export writes it), or, without a selector, every learned
    destination of the namespaces it covers; None when the selector names no workload."""
    selector = mapping(_spec(obj).get("selector"))
    if not selector:
        return [d for ns in affects for d in learned.destinations(ns)]
    workload = mapping(selector.get("matchLabels")).get(learned.selector_label)
    if not isinstance(workload, str) or not workload:
        return None
    return [f"{_ns(obj)}/{workload}"]


def istio_grant(rule: Mapping[str, Any], path: str, named: Mapping[str, str | None]) -> Grant:
    """One ALLOW rule, resolved against a workload's learned callers (`named`: caller key ->
    its Istio principal, None for a caller without one). A source without principals or
    namespaces (ipBlocks only, requestPrincipals only, notPrincipals other than Istio's "no
    principal" idiom) admits any principal; `when` conditions and ports are not credited (an
    ALLOW rule's `when` only narrows: the finding may say more than the rule admits, never
    less)."""
    sources: list[Source] = []
    for j, entry in enumerate(items(rule.get("from"))):
        src = mapping(mapping(entry).get("source"))
        at = f"{path}.from[{j}].source"
        found = len(sources)
        for key, what in (("principals", "principal"), ("namespaces", "namespace")):
            for value in items(src.get(key)):
                if isinstance(value, str):
                    admitted = frozenset(
                        c
                        for c, p in named.items()
                        if p is not None
                        and istio_match(value, p if key == "principals" else c.partition("/")[0])
                    )
                    sources.append(Source(f"{at}.{key}", value, what, admitted))
        if len(sources) > found:
            continue
        if src.get("notPrincipals") == ["*"]:
            no_identity = frozenset({UNAUTHENTICATED})
            sources.append(
                Source(f"{at}.notPrincipals", "*", "requests without identity", no_identity)
            )
        else:
            sources.append(Source(at, short(src), "any principal from", frozenset()))
    operations = []
    for j, target in enumerate(items(rule.get("to"))):
        op = mapping(mapping(target).get("operation"))
        methods = tuple(m.upper() for m in items(op.get("methods")) if isinstance(m, str))
        paths = tuple(istio_pattern(p) for p in items(op.get("paths")) if isinstance(p, str))
        operations.append(Operation(f"{path}.to[{j}].operation", methods or None, paths or None))
    return Grant(
        path,
        tuple(sources) if rule.get("from") else None,
        tuple(operations) if rule.get("to") else None,
        f"{path}.to",
        {c: p for c, p in named.items() if p is not None},
    )


def _principal_of(caller: str, trust_domain: str) -> str | None:
    account = caller_account(caller)
    return principal(trust_domain, account.namespace, account.name) if account else None


def istio_match(pattern: str, value: str) -> bool:
    """Istio's string match in principals, namespaces, methods: exact, `*` alone, a prefix
    (`abc*`) or a suffix (`*abc`)."""
    if pattern == "*":
        return bool(value)
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def istio_pattern(path: str) -> PathPattern:
    """The paths an Istio `paths` entry admits: exact, a prefix (`/a/*`, `/ad*`), a path
    template (`{*}` one segment, `{**}` the rest; Istio 1.22+), a suffix (`*.js`: taken as any
    path, which no learned template bounds) or `*`."""
    if path == "*" or path.startswith("*"):
        return PathPattern((), True, path)
    if path.endswith("*") and not path.endswith("{**}") and not path.endswith("{*}"):
        head = path[:-1]
        segments = templates.split_path(head.rstrip("/") if head.endswith("/") else head)
        if not head.endswith("/") and segments:  # a cut inside a segment: any such segment
            segments = [*segments[:-1], ONE]
        return PathPattern(tuple(segments), True, path)
    segments = templates.split_path(path)
    rest = bool(segments) and segments[-1] == "{**}"
    body = segments[:-1] if rest else segments
    return PathPattern(tuple(ONE if s == "{*}" else s for s in body), rest, path)


def learned_path(template: str) -> PathPattern | None:
    """A learned template as the export writes it for Istio (meshward.istio.authzexport), read
    back as Istio reads it; None when Istio cannot say it."""
    written, _ = istio_path(template)
    return istio_pattern(written) if written is not None else None


def envoy_filter(obj: Obj, scope: Scope) -> State:
    """Another EnvoyFilter (meshward's own are guarded by the controller's reconcile) that
    removes, replaces or reconfigures ext_authz, ext_proc or tap, or removes or replaces the
    inbound listeners they sit on."""
    affects = scope.affects(_ns(obj), _mesh_wide(obj))
    if not affects:
        return State()
    weak = []
    for i, patch in enumerate(items(_spec(obj).get("configPatches"))):
        if isinstance(patch, Mapping):
            what = tampering(patch)
            if what:
                detail = "meshward's filters may no longer see requests"
                weak.append(
                    Weakness(MESH_FILTER_TAMPERED, f"spec.configPatches[{i}]", what, detail)
                )
    return State(tuple(weak), (), affects)


def tampering(patch: Mapping[str, Any]) -> str:
    """What one configPatch does to meshward's filters ("" when nothing)."""
    apply_to = str(patch.get("applyTo") or "")
    match, body = mapping(patch.get("match")), mapping(patch.get("patch"))
    op = str(body.get("operation") or "")
    context = str(match.get("context") or "")
    chain = mapping(mapping(match.get("listener")).get("filterChain"))
    sub = mapping(mapping(chain.get("filter")).get("subFilter"))
    target = str(sub.get("name") or "")
    summary = f"{op} {apply_to} {target or '*'} ({context or 'ANY'})".replace("  ", " ")
    if apply_to == "HTTP_FILTER" and target in GUARDED_FILTERS and op in _CHANGING:
        return summary
    if apply_to in LISTENER_PARTS and op in ("REMOVE", "REPLACE") and context in INBOUND_CONTEXTS:
        return summary
    value = json.dumps(body.get("value") or {}, default=str, separators=(",", ":"))
    named = [n for n in GUARDED_FILTERS if n in value]
    if named and op == "REPLACE":
        return f"{summary} replacing it with {', '.join(named)}"
    if named and '"disabled":true' in value:  # per-route or per-host: the filter switched off
        return f"{summary} disabling {', '.join(named)}"
    return ""


_CHANGING = {"REMOVE", "REPLACE", "MERGE"}


def namespace_injection(obj: Obj) -> State:
    """`istio-injection=disabled` on a watched namespace; injection on (`enabled`, or a
    revision label) is a strength: removing it stops sidecars for new pods."""
    labels = mapping(mapping(obj.get("metadata")).get("labels"))
    weak, strong = [], []
    if labels.get(INJECT_LABEL) == "disabled":
        field = f"metadata.labels[{INJECT_LABEL}]"
        detail = "new pods start without istio-proxy: meshward's filters never see them"
        weak.append(Weakness(MESH_INJECTION_DISABLED, field, "disabled", detail))
    elif labels.get(INJECT_LABEL) == "enabled":
        field = f"metadata.labels[{INJECT_LABEL}]"
        strong.append(Strength(MESH_INJECTION_DISABLED, field, "enabled", "injection removed"))
    elif labels.get(REV_LABEL):
        field = f"metadata.labels[{REV_LABEL}]"
        value = str(labels[REV_LABEL])
        strong.append(Strength(MESH_INJECTION_DISABLED, field, value, "injection removed"))
    return State(tuple(weak), tuple(strong))


def pod_injection(obj: Obj) -> list[Weakness]:
    """`sidecar.istio.io/inject: "false"` on a pod (annotation or label); inbound ports left out
    of the redirection to istio-proxy (`excludeInboundPorts`, or `includeInboundPorts` other
    than `*`): requests to them reach the app around the sidecar and ext_authz."""
    meta = mapping(obj.get("metadata"))
    out = []
    for where in ("annotations", "labels"):
        values = mapping(meta.get(where))
        if str(values.get(POD_INJECT, "")).lower() == "false":
            detail = "this pod runs without istio-proxy"
            field = f"metadata.{where}[{POD_INJECT}]"
            out.append(Weakness(MESH_INJECTION_DISABLED, field, "false", detail))
    annotations = mapping(meta.get("annotations"))
    excluded = str(annotations.get(EXCLUDE_INBOUND, "")).strip()
    if excluded:
        field = f"metadata.annotations[{EXCLUDE_INBOUND}]"
        detail = "requests to these ports reach the app around istio-proxy"
        out.append(Weakness(MESH_INJECTION_DISABLED, field, short(excluded), detail))
    included = annotations.get(INCLUDE_INBOUND)
    if included is not None and str(included).strip() != "*":
        field = f"metadata.annotations[{INCLUDE_INBOUND}]"
        detail = "requests to ports not listed reach the app around istio-proxy"
        out.append(Weakness(MESH_INJECTION_DISABLED, field, short(str(included)), detail))
    return out
