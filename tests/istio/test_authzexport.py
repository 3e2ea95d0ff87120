"""The allowlist as Istio AuthorizationPolicies: valid against Istio's CRD schema, accepted by a
real API server with Istio's CRDs, and letting through what meshward learned (and not more)."""

from __future__ import annotations

from typing import Any

import pytest

from meshward.core.allowlist import Allowlist, EndpointRule
from meshward.core.engine import Engine
from meshward.istio.authzexport import DRY_RUN, MAX_RULES, authorization_policies, istio_path
from tests.support.allowlists import allowlist_of
from tests.support.apiserver import KubeCluster
from tests.support.crdschema import ISTIO_CRDS, Validators, check_object, crd_validators
from tests.support.learned import DESTINATION, istio_allows, sample_engine
from tests.support.openapi_traffic import DEVIATIONS, Traffic


@pytest.fixture(scope="module")
def schemas() -> Validators:
    return crd_validators(ISTIO_CRDS)


def _principal(key: str) -> str:
    ns, _, account = key.partition("/")
    return f"cluster.local/ns/{ns}/sa/{account}"


def _export(engine: Engine, **kw: Any) -> list[dict[str, Any]]:
    return authorization_policies(engine.allowlist, engine.mode_of, **kw).objects


@pytest.mark.parametrize(
    ("template", "templates", "want"),
    [
        ("/", True, ("/", "exact")),
        ("/health", True, ("/health", "exact")),
        ("/a/b/", True, ("/a/b/", "exact")),
        ("/products/{int}/reviews", True, ("/products/{*}/reviews", "template")),
        ("/files/{str}", True, ("/files/{*}", "template")),
        ("/static/{any}", True, ("/static/{**}", "template")),
        ("/{uuid}", True, ("/{*}", "template")),
        ("/products/{int}/reviews", False, ("/products/*", "prefix")),
        ("/{int}/x", False, ("/*", "prefix")),
        # a person's `{any}` before the end: Istio takes `{**}` only last
        ("/a/{any}/b", True, ("/a/*", "prefix")),
        ("/a/{int}/", True, ("/a/*", "prefix")),  # an empty segment is no template literal
        # Envoy's URI templates take no space or quote in a literal: a prefix instead
        ("/a b/{int}", True, ("/a b/*", "prefix")),
        ('/x"y/{str}/z', True, ('/x"y/*', "prefix")),
    ],
)
def test_paths(template: str, templates: bool, want: tuple[str, str]) -> None:
    assert istio_path(template, templates) == want


@pytest.mark.parametrize("template", ["/files/a*", "/*admin", "/x/{name}", "/{*}", "/a}/{int}"])
def test_literals_istio_would_read_as_patterns_are_left_out(template: str) -> None:
    path, why = istio_path(template)
    assert path is None and "pattern" in why


def test_learned_traffic_exports_valid_policies_that_allow_it(schemas: Validators) -> None:
    engine = sample_engine()
    (policy,) = _export(engine)
    check_object(schemas, policy)
    assert policy["metadata"] == {
        "name": "meshward-allow-api",
        "namespace": "shop",
        "labels": {
            "app.kubernetes.io/managed-by": "meshward",
            "meshward.io/mode": "enforce",
            "meshward.io/export": "authorizationpolicy",
        },
    }
    assert policy["spec"]["selector"] == {"matchLabels": {"app": "api"}}
    assert policy["spec"]["action"] == "ALLOW"
    # every rule of the learned profile is carried, with exactly its callers
    profile = engine.allowlist.get(DESTINATION)
    assert profile is not None
    for rule in profile.rules():
        path, _ = istio_path(rule.template)
        carrying = [
            r
            for r in policy["spec"]["rules"]
            for to in r["to"]
            if rule.method in to["operation"]["methods"] and path in to["operation"]["paths"]
        ]
        assert len(carrying) == 1, rule.name
        (principals,) = [f["source"]["principals"] for f in carrying[0]["from"]]
        assert principals == [_principal(s) for s in sorted(rule.sources)], rule.name
    # held-out normal traffic (values never seen) passes; HEAD rides on GET
    held_out = Traffic(seed=99)
    for _ in range(1000):
        obs = held_out.normal()
        assert istio_allows([policy], _principal(obs.source.key), obs.method, obs.path), (
            obs.source.key,
            obs.method,
            obs.path,
        )
    assert istio_allows([policy], _principal("shop/web"), "HEAD", "/health")


def test_what_meshward_denies_for_caller_method_or_path_istio_denies_too() -> None:
    (policy,) = _export(sample_engine())
    bad = Traffic(seed=1234)
    for kind in ("unknown-endpoint", "wrong-method", "unknown-caller"):
        assert kind in DEVIATIONS
        for _ in range(200):
            obs = bad.deviation(kind)
            assert not istio_allows([policy], _principal(obs.source.key), obs.method, obs.path), (
                kind,
                obs.method,
                obs.path,
            )
    # a known caller on an endpoint it never called
    assert not istio_allows([policy], _principal("shop/admin"), "GET", "/health")
    assert not istio_allows([policy], _principal("shop/mobile"), "DELETE", "/orders/abc12345def")
    # a caller without identity
    assert not istio_allows([policy], "", "GET", "/health")


@pytest.mark.parametrize(
    ("mode", "dry_run"), [("enforce", False), ("monitor", True), ("learn", True)]
)
def test_only_enforce_namespaces_get_enforcing_policies(mode: str, dry_run: bool) -> None:
    (policy,) = _export(sample_engine(mode=mode))
    annotations = policy["metadata"].get("annotations", {})
    assert (annotations.get(DRY_RUN) == "true") is dry_run
    assert policy["metadata"]["labels"]["meshward.io/mode"] == mode


def test_options_trust_domain_label_and_no_templates(schemas: Validators) -> None:
    (policy,) = _export(
        sample_engine(),
        trust_domain="corp.example",
        selector_label="app.kubernetes.io/name",
        path_templates=False,
    )
    check_object(schemas, policy)
    assert policy["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "api"}}
    principals = {
        p for r in policy["spec"]["rules"] for f in r["from"] for p in f["source"]["principals"]
    }
    assert principals and all(p.startswith("corp.example/ns/shop/sa/") for p in principals)
    paths = {p for r in policy["spec"]["rules"] for t in r["to"] for p in t["operation"]["paths"]}
    assert not any("{" in p for p in paths)
    assert "/products/*" in paths


def test_no_callers_gives_a_policy_that_denies_everything(schemas: Validators) -> None:
    allowlist = allowlist_of(("GET", "/x", {}))
    export = authorization_policies(allowlist, lambda ns: "enforce")
    (policy,) = export.objects
    check_object(schemas, policy)
    assert "rules" not in policy["spec"]  # an ALLOW policy without rules: Istio denies all
    assert not istio_allows([policy], _principal("shop/web"), "GET", "/x")
    assert [n.why for n in export.notes] == [
        "left out: no caller Istio can name",
        "no rule Istio can carry: the policy denies every request",
    ]


def test_rule_without_callers_takes_the_services_callers() -> None:
    allowlist = allowlist_of(("GET", "/a", {"shop/web": 3}))
    allowlist.services["shop/api"].add_rule(EndpointRule("GET", "/b"))  # a person's rule
    (policy,) = authorization_policies(allowlist, lambda ns: "enforce").objects
    assert istio_allows([policy], _principal("shop/web"), "GET", "/b")


def test_callers_without_identity_and_unnameable_callers() -> None:
    allowlist = allowlist_of(
        ("GET", "/plain", {"unknown": 5}),
        ("GET", "/mixed", {"unknown": 1, "shop/web": 2, "10.1.2.3": 1, "api.example.com": 1}),
    )
    export = authorization_policies(allowlist, lambda ns: "enforce")
    (policy,) = export.objects
    assert istio_allows([policy], "", "GET", "/plain")  # notPrincipals ["*"]: no principal
    assert not istio_allows([policy], _principal("shop/web"), "GET", "/plain")
    assert istio_allows([policy], _principal("shop/web"), "GET", "/mixed")
    assert istio_allows([policy], "", "GET", "/mixed")
    whys = sorted(n.why for n in export.notes)
    assert whys == [
        "caller '10.1.2.3' has no principal",
        "caller 'api.example.com' has no principal",
    ]


@pytest.mark.parametrize(
    "destination",
    [
        "api.example.com",
        "Shop/API",
        "../../etc/passwd",
        "shop/a b",
        "shop/" + "x" * 64,
        "shop/",
        "/x",
        "shop/api\nkind: Secret",
        "shop/\u0430pi",
    ],
)
def test_hostile_destinations_are_noted_not_exported(destination: str) -> None:
    allowlist = allowlist_of(("GET", "/x", {"shop/web": 1}), destination=destination)
    export = authorization_policies(allowlist, lambda ns: "enforce")
    assert export.objects == []
    assert [n.why for n in export.notes] == ["not a namespace/workload of Kubernetes names"]


def test_hostile_paths_and_methods_stay_data(schemas: Validators) -> None:
    allowlist = allowlist_of(
        ("GET", "/a*", {"shop/web": 1}),
        ("GET", "/x/{name}", {"shop/web": 1}),
        ("GET", "/q'\"; DROP/{int}", {"shop/web": 1}),
        ("BREW", "/pot", {"shop/web": 1}),
    )
    export = authorization_policies(allowlist, lambda ns: "enforce")
    (policy,) = export.objects
    check_object(schemas, policy)
    ops = [t["operation"] for r in policy["spec"]["rules"] for t in r["to"]]
    assert {"methods": ["BREW"], "paths": ["/pot"]} in ops
    assert {"methods": ["GET", "HEAD"], "paths": ["/q'\"; DROP/*"]} in ops
    assert not istio_allows([policy], _principal("shop/web"), "GET", "/abc")
    assert len(export.notes) == 3  # /a*, /x/{name} left out; the prefix noted


def test_more_rules_than_one_policy_holds_are_split(schemas: Validators) -> None:
    n = MAX_RULES + 5
    allowlist = allowlist_of(*[("GET", f"/r{i}", {f"shop/c{i}": 1}) for i in range(n)])
    policies = authorization_policies(allowlist, lambda ns: "enforce").objects
    assert [p["metadata"]["name"] for p in policies] == [
        "meshward-allow-api",
        "meshward-allow-api-2",
    ]
    assert sum(len(p["spec"]["rules"]) for p in policies) == n
    for p in policies:
        check_object(schemas, p)
    assert istio_allows(policies, _principal(f"shop/c{n - 1}"), "GET", f"/r{n - 1}")


def test_schema_check_can_fail(schemas: Validators) -> None:
    (policy,) = _export(sample_engine())
    policy["spec"]["rules"][0]["to"][0]["operation"]["path"] = ["/x"]  # a typo Kubernetes prunes
    with pytest.raises(AssertionError):
        check_object(schemas, policy)


@pytest.mark.integration
def test_policies_apply_to_a_real_api_server(
    kube_cluster: KubeCluster, istio_crds: None, kube_namespace: str
) -> None:
    from kubernetes import client

    allowlist = Allowlist()
    allowlist.import_doc(sample_engine().allowlist.export_doc())
    allowlist.services[f"{kube_namespace}/api"] = allowlist.services.pop(DESTINATION)
    allowlist.services[f"{kube_namespace}/api"].destination = f"{kube_namespace}/api"
    extra = allowlist_of(("GET", "/plain", {"unknown": 1}), destination=f"{kube_namespace}/legacy")
    allowlist.services.update(extra.services)
    objects = authorization_policies(allowlist, lambda ns: "monitor").objects
    assert len(objects) == 2
    with kube_cluster.api_client() as api:
        custom = client.CustomObjectsApi(api)
        for obj in objects:
            custom.create_namespaced_custom_object(
                "security.istio.io", "v1", kube_namespace, "authorizationpolicies", obj
            )
        for obj in objects:
            live = custom.get_namespaced_custom_object(
                "security.istio.io",
                "v1",
                kube_namespace,
                "authorizationpolicies",
                obj["metadata"]["name"],
            )
            assert live["spec"] == obj["spec"]  # nothing pruned: every field is Istio's
            assert live["metadata"]["annotations"] == {DRY_RUN: "true"}
