"""The learned allowlist as Istio AuthorizationPolicy ALLOW objects: one per destination workload.

istiod turns each into Envoy's RBAC filter in the workload's sidecar, so the allowlist's coarse
part (who may call which method on which path) is enforced natively, at the cost of Envoy's RBAC
(+3 µs p50 measured here, against +390 µs for a Python ext_authz). What a rule becomes
(docs/exports.md has the whole mapping):

- the destination: `selector.matchLabels` {label: workload} (`istio render`'s default `app`);
- its callers: `from.source.principals` `<trust-domain>/ns/<ns>/sa/<account>` (the SPIFFE id
  without `spiffe://`, as Istio writes principals); a caller without identity (`unknown`):
  `notPrincipals: ["*"]`, a request without a principal;
- method: `methods` (GET brings HEAD, as meshward's matching does);
- path template: `paths`, exact for literal templates; a template with variables becomes
  Istio's path template (Istio 1.22+: `{*}` for one segment, `{**}` for the rest of the path),
  or, with `path_templates=False` or literals Envoy's URI templates refuse, a prefix (`/a/*`),
  wider, noted.
- Value classes (of path variables, query and body fields), body shapes, sizes and statuses
  have no RBAC equivalent: they stay with meshward (ext_authz or the tap).

Namespaces not in enforce get `istio.io/dry-run: "true"`: Envoy evaluates the policy in
shadow mode, logs and counts what it would deny, and denies nothing, as meshward's own modes.
"""

from __future__ import annotations

import re
from typing import Any

from meshward.core import templates
from meshward.core.allowlist import Allowlist
from meshward.core.exports import (
    EXPORT_LABEL,
    UNAUTHENTICATED,
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

AUTHZ_POLICY_API = "security.istio.io/v1"
DRY_RUN = "istio.io/dry-run"
PATH_TEMPLATES_SINCE = "1.22"  # the first Istio whose AuthorizationPolicy reads {*} and {**}
MAX_RULES = 512  # the CRD's maxItems on spec.rules: past it, a second policy (ALLOWs are ORed)
ONE_SEGMENT = "{*}"
REST = "{**}"
# what Envoy's URI template matcher takes as literal characters (RFC 3986 pchar, less `*`, `=`
# stays); a segment with any other character cannot sit in a template
_TEMPLATE_LITERAL = re.compile(r"[A-Za-z0-9\-._~%!$&'()+,;:@=]+")
_SPECIAL = re.compile(r"[*{}]")  # prefix/suffix/template syntax in an Istio path string


def istio_path(template: str, path_templates: bool = True) -> tuple[str | None, str]:
    """(the `paths` entry for a meshward template, how it matches): "exact", "template",
    "prefix" (wider), or (None, why) when Istio cannot say it."""
    segments = templates.split_path(template)
    if any(_SPECIAL.search(s) for s in segments if not templates.is_variable(s)):
        return None, "a literal with '*', '{' or '}', which Istio reads as a pattern"
    if not any(templates.is_variable(s) for s in segments):
        return templates.join_path(segments), "exact"
    literals = [s for s in segments if not templates.is_variable(s)]
    rest_last = templates.REST not in segments[:-1]  # Istio: `{**}` only as the last operator
    if path_templates and rest_last and all(_TEMPLATE_LITERAL.fullmatch(s) for s in literals):
        out = [
            REST if s == templates.REST else ONE_SEGMENT if templates.is_variable(s) else s
            for s in segments
        ]
        return templates.join_path(out), "template"
    first = next(i for i, s in enumerate(segments) if templates.is_variable(s))
    return templates.join_path(segments[:first]).rstrip("/") + "/*", "prefix"


def principal(trust_domain: str, namespace: str, account: str) -> str:
    """Istio's spelling of a SPIFFE id in `principals`: without the `spiffe://` scheme."""
    return f"{trust_domain}/ns/{namespace}/sa/{account}"


def authorization_policies(
    allowlist: Allowlist,
    mode_of: ModeOf,
    *,
    trust_domain: str = "cluster.local",
    selector_label: str = "app",
    path_templates: bool = True,
    destination: str | None = None,
) -> Export:
    """ALLOW AuthorizationPolicies for every destination workload (or one), with the notes of
    what they leave out. A workload none of whose rules Istio can carry gets a policy with no
    rules: Istio then denies every request to it, as meshward's enforce would."""
    export = Export()
    notes = export.notes
    for workload, profile in targets(allowlist, destination, notes):
        key = workload.key
        # (principals, unauthenticated allowed) -> (methods) -> paths
        groups: dict[tuple[tuple[str, ...], bool], dict[tuple[str, ...], list[str]]] = {}
        for rule in profile.rules():
            path, how = istio_path(rule.template, path_templates)
            if path is None:
                notes.append(Note(key, rule.name, f"left out: {how}"))
                continue
            if how == "prefix":
                notes.append(Note(key, rule.name, f"widened to the prefix {path}"))
            principals, unauthenticated = [], False
            for caller in rule_callers(profile, rule):
                account = caller_account(caller)
                if account is not None:
                    principals.append(principal(trust_domain, account.namespace, account.name))
                elif caller == UNAUTHENTICATED:
                    unauthenticated = True
                else:
                    notes.append(Note(key, rule.name, f"caller {caller[:120]!r} has no principal"))
            if not principals and not unauthenticated:
                notes.append(Note(key, rule.name, "left out: no caller Istio can name"))
                continue
            paths = groups.setdefault((tuple(principals), unauthenticated), {}).setdefault(
                rule_methods(rule.method), []
            )
            if path not in paths:
                paths.append(path)
        rules = [_rule(principals, unauth, ops) for (principals, unauth), ops in groups.items()]
        if not rules:
            notes.append(Note(key, "", "no rule Istio can carry: the policy denies every request"))
        mode = mode_of(workload.namespace)
        chunks = [rules[i : i + MAX_RULES] for i in range(0, len(rules), MAX_RULES)] or [[]]
        for n, chunk in enumerate(chunks, 1):
            name = f"meshward-allow-{workload.name}" + (f"-{n}" if n > 1 else "")
            export.objects.append(
                _policy(name, workload.namespace, mode, {selector_label: workload.name}, chunk)
            )
    return export


def _rule(
    principals: tuple[str, ...], unauthenticated: bool, ops: dict[tuple[str, ...], list[str]]
) -> dict[str, Any]:
    sources: list[dict[str, Any]] = []
    if principals:
        sources.append({"source": {"principals": list(principals)}})
    if unauthenticated:  # presence match "*" negated: a request that carries no principal
        sources.append({"source": {"notPrincipals": ["*"]}})
    return {
        "from": sources,
        "to": [
            {"operation": {"methods": list(methods), "paths": paths}}
            for methods, paths in ops.items()
        ],
    }


def _policy(
    name: str, namespace: str, mode: str, labels: dict[str, str], rules: list[dict[str, Any]]
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**MANAGED_BY, MODE_LABEL: mode, EXPORT_LABEL: "authorizationpolicy"},
    }
    if not enforced(mode):
        metadata["annotations"] = {DRY_RUN: "true"}
    spec: dict[str, Any] = {"selector": {"matchLabels": labels}, "action": "ALLOW"}
    if rules:
        spec["rules"] = rules
    return {
        "apiVersion": AUTHZ_POLICY_API,
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": spec,
    }
