"""An engine that learned the sample API's traffic (tests/support/sample_api.yaml), and what
the native-policy exports' tests share: each system's own matching, to judge an exported
policy by the requests it lets through."""

from __future__ import annotations

import functools
import re
from typing import Any

from meshward.core.engine import Engine, EngineConfig
from tests.support.openapi_traffic import Traffic

DESTINATION = "shop/api"


@functools.lru_cache(maxsize=2)
def _learned_doc(n: int, seed: int) -> dict[str, Any]:
    engine = Engine(config=EngineConfig(threats=False))
    traffic = Traffic(seed=seed)
    for _ in range(n):
        engine.evaluate(traffic.normal(), mode="learn")
    return engine.allowlist.export_doc()


def sample_engine(n: int = 1500, seed: int = 7, mode: str = "enforce") -> Engine:
    """A fresh engine holding what `n` normal requests of the sample API taught (learned once
    per (n, seed) and copied: tests may change it), the namespace `shop` in `mode`."""
    engine = Engine(config=EngineConfig(threats=False))
    engine.allowlist.import_doc(_learned_doc(n, seed))
    engine.set_mode("shop", mode)
    return engine


def istio_string_match(pattern: str, value: str) -> bool:
    """Istio's string match of a `paths`/`principals` entry: `{*}`/`{**}` path templates
    (Istio 1.22+, Envoy's URI template), else exact, prefix `x*`, suffix `*x` or presence `*`."""
    if "{*}" in pattern or "{**}" in pattern:
        regex = "".join(
            "[^/]+" if part == "{*}" else ".*" if part == "{**}" else re.escape(part)
            for part in re.split(r"(\{\*\*\}|\{\*\})", pattern)
        )
        return re.fullmatch(regex, value) is not None
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return pattern == value


def istio_allows(policies: list[dict[str, Any]], principal: str, method: str, path: str) -> bool:
    """Would these ALLOW AuthorizationPolicies (all selecting one workload) let a request in?
    Istio's rule: some rule of some policy matches (its `from` and its `to`); a workload with
    ALLOW policies and no match is denied."""
    for policy in policies:
        for rule in policy["spec"].get("rules", []):
            if not any(_source_matches(f["source"], principal) for f in rule.get("from", [{}])):
                continue
            for to in rule.get("to", []):
                op = to["operation"]
                if method in op.get("methods", [method]) and any(
                    istio_string_match(p, path) for p in op.get("paths", [path])
                ):
                    return True
    return False


def _source_matches(source: dict[str, Any], principal: str) -> bool:
    if "principals" in source and not any(
        istio_string_match(p, principal) for p in source["principals"]
    ):
        return False
    return not (
        "notPrincipals" in source
        and any(istio_string_match(p, principal) for p in source["notPrincipals"])
    )


def linkerd_allows(objects: list[dict[str, Any]], identity: str, method: str, path: str) -> bool:
    """Would linkerd2-proxy let a request from `identity` in ("" without one)? A route whose
    match fits and whose AuthorizationPolicy's MeshTLSAuthentication names the caller."""
    by = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for o in objects:
        if o["kind"] != "AuthorizationPolicy":
            continue
        route = by[("HTTPRoute", o["spec"]["targetRef"]["name"])]
        authn = by[("MeshTLSAuthentication", o["spec"]["requiredAuthenticationRefs"][0]["name"])]
        if identity not in authn["spec"]["identities"]:
            continue
        for rule in route["spec"]["rules"]:
            for m in rule["matches"]:
                if m.get("method", method) != method:
                    continue
                p = m["path"]
                if p["type"] == "Exact" and p["value"] == path:
                    return True
                if p["type"] == "RegularExpression" and re.fullmatch(p["value"], path):
                    return True
                if p["type"] == "PathPrefix" and path.startswith(p["value"]):
                    return True
    return False
