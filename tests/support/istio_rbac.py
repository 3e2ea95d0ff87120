"""A stand-in for istiod's translation of ALLOW AuthorizationPolicies into Envoy's RBAC filter,
and a sidecar that enforces it over Istio's mTLS (istiod cannot run here).

The translation follows what istiod writes into a sidecar's inbound HTTP filter chain, for the
fields meshward's export uses (docs/exports.md): one RBAC policy per rule, named
`ns[NS]-policy[NAME]-rule[I]`; its permissions are the rule's `to` operations (each the AND of
`:method` header matches and `paths`: `url_path` exact, prefix for `x*`, Envoy's
`uri_template` matcher for `{*}`/`{**}` templates); its principals are the rule's `from`
sources (`authenticated.principal_name` exact `spiffe://<principal>`; `notPrincipals ["*"]` the
negated presence match). A policy marked `istio.io/dry-run` goes to `shadow_rules` with the
stat prefix `istio_dry_run_allow_`: evaluated and counted, never enforced.
"""

from __future__ import annotations

from typing import Any

from meshward.istio import filters
from meshward.istio.bootstrap import HCM_CONFIG, ROUTER_CONFIG
from meshward.istio.tls import SidecarTLS, downstream_socket

RBAC = "envoy.filters.http.rbac"
RBAC_CONFIG = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
URI_TEMPLATE = (
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
)
DRY_RUN_PREFIX = "istio_dry_run_allow_"


def _any(rules: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return rules[0] if len(rules) == 1 else {f"or_{key}": {key: rules}}


def _path(path: str) -> dict[str, Any]:
    if "{*}" in path or "{**}" in path:
        template = path.replace("{**}", "**").replace("{*}", "*")
        return {
            "uri_template": {
                "name": "uri-template",
                "typed_config": {"@type": URI_TEMPLATE, "path_template": template},
            }
        }
    if path == "*":
        return {"url_path": {"path": {"safe_regex": {"regex": ".+"}}}}
    if path.endswith("*"):
        return {"url_path": {"path": {"prefix": path[:-1]}}}
    if path.startswith("*"):
        return {"url_path": {"path": {"suffix": path[1:]}}}
    return {"url_path": {"path": {"exact": path}}}


def _permission(op: dict[str, Any]) -> dict[str, Any]:
    parts = []
    if "methods" in op:
        methods = [
            {"header": {"name": ":method", "string_match": {"exact": m}}} for m in op["methods"]
        ]
        parts.append(_any(methods, "rules"))
    if "paths" in op:
        parts.append(_any([_path(p) for p in op["paths"]], "rules"))
    return {"and_rules": {"rules": parts}} if parts else {"any": True}


def _principal(source: dict[str, Any]) -> dict[str, Any]:
    parts = []
    if "principals" in source:
        ids = [
            {"authenticated": {"principal_name": {"exact": f"spiffe://{p}"}}}
            for p in source["principals"]
        ]
        parts.append(_any(ids, "ids"))
    if source.get("notPrincipals") == ["*"]:
        present = {"authenticated": {"principal_name": {"safe_regex": {"regex": ".+"}}}}
        parts.append({"not_id": present})
    return {"and_ids": {"ids": parts}} if parts else {"any": True}


def _dry_run(policy: dict[str, Any]) -> bool:
    return policy["metadata"].get("annotations", {}).get("istio.io/dry-run") == "true"


def _policies(policies: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for policy in policies:
        meta = policy["metadata"]
        for i, rule in enumerate(policy["spec"].get("rules", [])):
            out[f"ns[{meta['namespace']}]-policy[{meta['name']}]-rule[{i}]"] = {
                "permissions": [_permission(t["operation"]) for t in rule.get("to", [])]
                or [{"any": True}],
                "principals": [_principal(f["source"]) for f in rule.get("from", [])]
                or [{"any": True}],
            }
    return out


def rbac_filter(policies: list[dict[str, Any]]) -> dict[str, Any]:
    """The RBAC http filter istiod would give the workload these ALLOW policies select (an
    ALLOW policy without rules: `rules` with no policy, which denies everything)."""
    live = [p for p in policies if not _dry_run(p)]
    dry = [p for p in policies if _dry_run(p)]
    config: dict[str, Any] = {"@type": RBAC_CONFIG}
    if live:
        config["rules"] = {"action": "ALLOW", "policies": _policies(live)}
    if dry:
        config["shadow_rules"] = {"action": "ALLOW", "policies": _policies(dry)}
        config["shadow_rules_stat_prefix"] = DRY_RUN_PREFIX
    return {"name": RBAC, "typed_config": config}


def rbac_sidecar(tls: SidecarTLS, policies: list[dict[str, Any]]) -> dict[str, Any]:
    """A bootstrap: one inbound listener under STRICT mTLS (a client certificate from the mesh
    CA), the RBAC filter of `policies`, then a 200 for whatever it lets through."""
    hcm = {
        "@type": HCM_CONFIG,
        "stat_prefix": "inbound",
        "codec_type": "AUTO",
        "normalize_path": True,  # Istio's default path normalisation (BASE)
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "inbound",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}],
                }
            ]
        },
        "http_filters": [
            rbac_filter(policies),
            {"name": filters.ROUTER, "typed_config": {"@type": ROUTER_CONFIG}},
        ],
    }
    return {
        "node": {"id": "sidecar~127.0.0.1~api.shop~shop.svc.cluster.local"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "transport_socket": downstream_socket(tls, ["http/1.1"]),
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ],
                        }
                    ],
                }
            ],
            "clusters": [],
        },
    }
