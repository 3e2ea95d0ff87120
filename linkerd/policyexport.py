"""The learned allowlist as Linkerd policy: the native enforcement for Linkerd pods.

meshward's node tap only observes a Linkerd pod's traffic (it reads a copy on the pod's
loopback): it cannot block anything, so `enforce` denies nothing there. linkerd2-proxy can,
from these objects (policy.linkerd.io, Linkerd 2.16 or later: Server v1beta3's `accessPolicy`),
per destination workload:

- a Server `meshward-<workload>` selecting its pods ({label: workload}) on one port, with
  `accessPolicy: deny` in enforce namespaces and `audit` elsewhere (Linkerd then lets
  unauthorized requests through and marks them, as meshward's monitor mode alerts);
- per set of callers: a MeshTLSAuthentication of their Linkerd identities
  (`<account>.<ns>.serviceaccount.identity.linkerd.<trust-domain>`), HTTPRoutes attached to the
  Server whose matches are the callers' rules (method; path Exact for a literal template, else a
  RegularExpression with one pattern per template variable: `{int}` digits, `{uuid}` a UUID,
  `{str}` any one segment, `{any}` the rest), and an AuthorizationPolicy binding the two.
  Routes hold at most 16 rules of 8 matches (the CRD's bounds): more make more routes;
- in audit namespaces, a catch-all route (`PathPrefix /`) with no authorization, so unlearned
  requests match a route and reach the Server's audit policy instead of matching none.

Callers without identity (`unknown`) are not exported (a NetworkAuthentication would admit
every address, meshed or not); query, body and finer value classes stay with meshward.
"""

from __future__ import annotations

from typing import Any

from meshward.core import templates
from meshward.core.allowlist import Allowlist
from meshward.core.exports import (
    EXPORT_LABEL,
    Export,
    ModeOf,
    Note,
    caller_account,
    enforced,
    rule_callers,
    rule_methods,
    targets,
)
from meshward.core.labels import MANAGED_BY, MODE_LABEL
from meshward.linkerd.pods import linkerd_identity

POLICY_API = "policy.linkerd.io"
SERVER_API = f"{POLICY_API}/v1beta3"
ROUTE_API = f"{POLICY_API}/v1beta3"
AUTH_API = f"{POLICY_API}/v1alpha1"
LINKERD_SINCE = "2.16"  # Server v1beta3 with accessPolicy (audit)
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
MATCHES_PER_RULE = 8  # HTTPRoute CRD: rules[].matches maxItems
RULES_PER_ROUTE = 16  # HTTPRoute CRD: rules maxItems
MAX_PATH = 1024  # HTTPRoute CRD: path value maxLength
# the segment each template variable matches, in the regex dialect of linkerd2-proxy (Rust's
# `regex` crate: no look-around), anchored by the whole-path pattern
SEGMENT = {
    "{int}": "-?[0-9]{1,63}",
    "{uuid}": "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "{hex}": "[0-9a-fA-F]{8,128}",
    "{date}": "[0-9]{4}-[0-9]{2}-[0-9]{2}[^/]*",
    "{email}": "[^/@]+@[^/@]+",
    "{jwt}": "eyJ[A-Za-z0-9_\\-]+\\.[A-Za-z0-9_\\-]+\\.[A-Za-z0-9_\\-]*",
    "{token}": "[A-Za-z0-9_\\-]{16,256}",
    templates.STR: "[^/]+",
    templates.REST: ".+",
}
_RUST_META = frozenset("\\.+*?()|[]{}^$#&-~")  # what regex_syntax::escape escapes


def rust_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _RUST_META else c for c in text)


def path_match(template: str) -> dict[str, str] | None:
    """HTTPRoute path match for a meshward template (None: too long for the CRD)."""
    segments = templates.split_path(template)
    if not any(templates.is_variable(s) for s in segments):
        value = templates.join_path(segments)
        kind = "Exact"
    else:
        parts = [SEGMENT[s] if templates.is_variable(s) else rust_escape(s) for s in segments]
        value = "^/" + "/".join(parts) + "$"
        kind = "RegularExpression"
    if len(value) > MAX_PATH:
        return None
    return {"type": kind, "value": value}


def linkerd_policy(
    allowlist: Allowlist,
    mode_of: ModeOf,
    *,
    trust_domain: str = "cluster.local",
    selector_label: str = "app",
    port: str = "http",
    destination: str | None = None,
) -> Export:
    """Server, MeshTLSAuthentications, HTTPRoutes and AuthorizationPolicies per destination
    workload (or one). `port`: the Server's port, a name in the pod spec or a number."""
    export = Export()
    notes = export.notes
    for workload, profile in targets(allowlist, destination, notes):
        key, ns, name = workload.key, workload.namespace, workload.name
        mode = mode_of(ns)
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # identities -> matches
        for rule in profile.rules():
            if rule.method not in METHODS:
                notes.append(Note(key, rule.name, "left out: HTTPRoute takes no such method"))
                continue
            path = path_match(rule.template)
            if path is None:
                notes.append(Note(key, rule.name, f"left out: path over {MAX_PATH} characters"))
                continue
            identities = []
            for caller in rule_callers(profile, rule):
                account = caller_account(caller)
                if account is None:
                    notes.append(Note(key, rule.name, f"caller {caller[:120]!r} has no identity"))
                    continue
                identities.append(
                    linkerd_identity(account.name, account.namespace, trust_domain=trust_domain)
                )
            if not identities:
                notes.append(Note(key, rule.name, "left out: no caller Linkerd can name"))
                continue
            matches = groups.setdefault(tuple(identities), [])
            matches.extend({"path": dict(path), "method": m} for m in rule_methods(rule.method))
        server = f"meshward-{name}"
        export.objects.append(_server(server, ns, mode, {selector_label: name}, port))
        if not groups:
            notes.append(
                Note(key, "", "no rule Linkerd can carry: the Server denies every request")
            )
        for n, (callers, matches) in enumerate(groups.items(), 1):
            authn = f"meshward-{name}-callers-{n}"
            export.objects.append(_authn(authn, ns, mode, list(callers)))
            per_route = MATCHES_PER_RULE * RULES_PER_ROUTE
            chunks = [matches[i : i + per_route] for i in range(0, len(matches), per_route)]
            for c, chunk in enumerate(chunks, 1):
                route = f"meshward-{name}-{n}" + (f"-{c}" if len(chunks) > 1 else "")
                export.objects.append(_route(route, ns, mode, server, chunk))
                export.objects.append(_authz(route, ns, mode, route, authn))
        if not enforced(mode):
            catch_all = [{"path": {"type": "PathPrefix", "value": "/"}}]
            export.objects.append(_route(f"meshward-{name}-unlearned", ns, mode, server, catch_all))
    return export


def _meta(name: str, namespace: str, mode: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {**MANAGED_BY, MODE_LABEL: mode, EXPORT_LABEL: "linkerd"},
    }


def _server(
    name: str, namespace: str, mode: str, labels: dict[str, str], port: str
) -> dict[str, Any]:
    return {
        "apiVersion": SERVER_API,
        "kind": "Server",
        "metadata": _meta(name, namespace, mode),
        "spec": {
            "podSelector": {"matchLabels": labels},
            "port": int(port) if port.isdigit() else port,
            "accessPolicy": "deny" if enforced(mode) else "audit",
        },
    }


def _authn(name: str, namespace: str, mode: str, identities: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": AUTH_API,
        "kind": "MeshTLSAuthentication",
        "metadata": _meta(name, namespace, mode),
        "spec": {"identities": identities},
    }


def _route(
    name: str, namespace: str, mode: str, server: str, matches: list[dict[str, Any]]
) -> dict[str, Any]:
    rules = [
        {"matches": matches[i : i + MATCHES_PER_RULE]}
        for i in range(0, len(matches), MATCHES_PER_RULE)
    ]
    return {
        "apiVersion": ROUTE_API,
        "kind": "HTTPRoute",
        "metadata": _meta(name, namespace, mode),
        "spec": {
            "parentRefs": [{"group": POLICY_API, "kind": "Server", "name": server}],
            "rules": rules,
        },
    }


def _authz(name: str, namespace: str, mode: str, route: str, authn: str) -> dict[str, Any]:
    return {
        "apiVersion": AUTH_API,
        "kind": "AuthorizationPolicy",
        "metadata": _meta(name, namespace, mode),
        "spec": {
            "targetRef": {"group": POLICY_API, "kind": "HTTPRoute", "name": route},
            "requiredAuthenticationRefs": [
                {"group": POLICY_API, "kind": "MeshTLSAuthentication", "name": authn}
            ],
        },
    }
