"""The mesh guard's Linkerd rules: the weak spots of Server, AuthorizationPolicy and
MeshTLSAuthentication objects (policy.linkerd.io) and of Linkerd's inject annotation on
Namespaces and Pods (docs/mesh-guard.md). Pure functions of one object state and the guard's
`Scope`; the controller diffs two states (meshward.core.meshguard.diff).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshward.core.meshguard import (
    Obj,
    Scope,
    State,
    Strength,
    Weakness,
    mapping,
    short,
)
from meshward.core.threats.names import MESH_INJECTION_DISABLED, MESH_POLICY_WIDENED

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
    return State(tuple(weak), (), affects)


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
