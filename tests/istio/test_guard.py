"""The mesh guard's Istio rules, without a cluster: what weakens a watched namespace and what
does not (narrowing changes, other namespaces, hosts outside the cluster)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.app.exports import export
from meshward.core.allowlist import Allowlist
from meshward.core.meshguard import ONE, Learned, PathPattern, Scope, diff
from meshward.core.threats.names import (
    MESH_FILTER_TAMPERED,
    MESH_INJECTION_DISABLED,
    MESH_MTLS_WEAKENED,
    MESH_POLICY_WIDENED,
)
from meshward.istio import guard
from meshward.istio.envoyfilter import render
from tests.support.allowlists import allowlist_of, learned_allowlists

SCOPE = Scope(frozenset({"shop", "pay"}), "istio-system")


def obj(kind: str, ns: str, spec: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec}


def fields(state: Any) -> set[tuple[str, str, str]]:
    return {(w.threat, w.field, w.value) for w in state.weak}


def test_peer_authentication() -> None:
    permissive = obj("PeerAuthentication", "shop", {"mtls": {"mode": "PERMISSIVE"}})
    assert fields(guard.peer_authentication(permissive, SCOPE)) == {
        (MESH_MTLS_WEAKENED, "spec.mtls.mode", "PERMISSIVE")
    }
    port = obj(
        "PeerAuthentication",
        "shop",
        {"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}},
    )
    state = guard.peer_authentication(port, SCOPE)
    assert fields(state) == {(MESH_MTLS_WEAKENED, "spec.portLevelMtls[8080].mode", "DISABLE")}
    assert [s.value for s in state.strong] == ["STRICT"]
    # elsewhere: nothing; mesh-wide in the root namespace: every watched namespace
    assert guard.peer_authentication(obj("PeerAuthentication", "dev", permissive["spec"]), SCOPE)
    assert not guard.peer_authentication(
        obj("PeerAuthentication", "dev", permissive["spec"]), SCOPE
    ).weak
    root = guard.peer_authentication(obj("PeerAuthentication", "istio-system", {}), SCOPE)
    assert root.affects == ("pay", "shop")
    selected = obj("PeerAuthentication", "istio-system", {"selector": {"matchLabels": {"a": "b"}}})
    assert guard.peer_authentication(selected, SCOPE).affects == ()


def test_peer_authentication_narrowing_raises_nothing() -> None:
    old = obj("PeerAuthentication", "shop", {"mtls": {"mode": "PERMISSIVE"}})
    new = obj("PeerAuthentication", "shop", {"mtls": {"mode": "STRICT"}})
    found = diff(
        "PeerAuthentication",
        old,
        new,
        guard.peer_authentication(old, SCOPE),
        guard.peer_authentication(new, SCOPE),
    )
    assert all(f.cleared for f in found)


def test_host_namespace() -> None:
    assert guard.host_namespace("reviews", "shop") == "shop"
    assert guard.host_namespace("reviews.pay", "shop") == "pay"
    assert guard.host_namespace("reviews.pay.svc.cluster.local", "shop") == "pay"
    assert guard.host_namespace("*.pay.svc.cluster.local", "shop") == "pay"
    assert guard.host_namespace("*", "shop") == "*"
    assert guard.host_namespace("*.svc.cluster.local", "shop") == "*"
    assert guard.host_namespace("api.example.com", "shop") is None


def test_destination_rule_tls_off_toward_watched_service() -> None:
    spec = {
        "host": "reviews.shop.svc.cluster.local",
        "trafficPolicy": {
            "tls": {"mode": "DISABLE"},
            "portLevelSettings": [{"port": {"number": 9080}, "tls": {"mode": "DISABLE"}}],
        },
        "subsets": [{"name": "v1", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}],
    }
    dr = obj("DestinationRule", "dev", spec)  # a rule in any namespace, toward shop
    assert {f for _, f, _ in fields(guard.destination_rule(dr, SCOPE))} == {
        "spec.trafficPolicy.tls.mode",
        "spec.trafficPolicy.portLevelSettings[0].tls.mode",
        "spec.subsets[0].trafficPolicy.tls.mode",
    }
    mutual = obj(
        "DestinationRule", "dev", {**spec, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}
    )
    mutual["spec"].pop("subsets")
    assert not guard.destination_rule(mutual, SCOPE).weak
    outside = obj("DestinationRule", "shop", {**spec, "host": "api.example.com"})
    assert not guard.destination_rule(outside, SCOPE).weak
    other = obj("DestinationRule", "shop", {**spec, "host": "db.dev.svc.cluster.local"})
    assert not guard.destination_rule(other, SCOPE).weak


def test_sidecar_ingress_tls() -> None:
    sc = obj(
        "Sidecar",
        "shop",
        {"ingress": [{"port": {"number": 8443}, "tls": {"mode": "SIMPLE"}}, {"port": {}}]},
    )
    assert fields(guard.sidecar(sc, SCOPE)) == {
        (MESH_MTLS_WEAKENED, "spec.ingress[0].tls.mode", "SIMPLE")
    }


def test_authorization_policy_widenings() -> None:
    allow_all = obj("AuthorizationPolicy", "shop", {"action": "ALLOW", "rules": [{}]})
    assert fields(guard.authorization_policy(allow_all, SCOPE)) == {
        (MESH_POLICY_WIDENED, "spec.rules[0]", "{}")
    }
    any_source = obj(
        "AuthorizationPolicy", "shop", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}
    )
    assert {f for _, f, _ in fields(guard.authorization_policy(any_source, SCOPE))} == {
        "spec.rules[0].from"
    }
    star = obj(
        "AuthorizationPolicy",
        "shop",
        {
            "rules": [
                {
                    "from": [{"source": {"principals": ["*"]}}],
                    "to": [{"operation": {"paths": ["/*"]}}],
                }
            ]
        },
    )
    assert {f for _, f, _ in fields(guard.authorization_policy(star, SCOPE))} == {
        "spec.rules[0].from[0].source.principals",
        "spec.rules[0].to[0].operation.paths",
    }
    narrow = obj(
        "AuthorizationPolicy",
        "shop",
        {
            "rules": [
                {
                    "from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}],
                    "to": [{"operation": {"paths": ["/api/orders"], "methods": ["GET"]}}],
                }
            ]
        },
    )
    assert not guard.authorization_policy(narrow, SCOPE).weak
    allow_nothing = obj("AuthorizationPolicy", "shop", {})
    assert not guard.authorization_policy(allow_nothing, SCOPE).weak
    deny = obj("AuthorizationPolicy", "shop", {"action": "DENY", "rules": [{}]})
    state = guard.authorization_policy(deny, SCOPE)
    assert not state.weak and [s.field for s in state.strong] == ["spec.action"]
    (removed,) = diff(
        "AuthorizationPolicy", deny, None, state, guard.authorization_policy({}, SCOPE)
    )
    assert (removed.threat, removed.old, removed.new) == (MESH_POLICY_WIDENED, "DENY", "(deleted)")


def test_envoy_filter_tampering() -> None:
    def ef(*patches: dict[str, Any]) -> dict[str, Any]:
        return obj("EnvoyFilter", "shop", {"configPatches": list(patches)})

    remove_authz = {
        "applyTo": "HTTP_FILTER",
        "match": {
            "context": "SIDECAR_INBOUND",
            "listener": {
                "filterChain": {
                    "filter": {
                        "name": "envoy.filters.network.http_connection_manager",
                        "subFilter": {"name": "envoy.filters.http.ext_authz"},
                    }
                }
            },
        },
        "patch": {"operation": "REMOVE"},
    }
    per_route_off = {
        "applyTo": "HTTP_ROUTE",
        "match": {"context": "SIDECAR_INBOUND"},
        "patch": {
            "operation": "MERGE",
            "value": {
                "typed_per_filter_config": {"envoy.filters.http.ext_authz": {"disabled": True}}
            },
        },
    }
    drop_listener = {
        "applyTo": "LISTENER",
        "match": {"context": "SIDECAR_INBOUND"},
        "patch": {"operation": "REMOVE"},
    }
    add_lua = {
        "applyTo": "HTTP_FILTER",
        "match": {"context": "SIDECAR_OUTBOUND"},
        "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.lua"}},
    }
    state = guard.envoy_filter(ef(remove_authz, per_route_off, drop_listener, add_lua), SCOPE)
    assert {(t, f) for t, f, _ in fields(state)} == {
        (MESH_FILTER_TAMPERED, "spec.configPatches[0]"),
        (MESH_FILTER_TAMPERED, "spec.configPatches[1]"),
        (MESH_FILTER_TAMPERED, "spec.configPatches[2]"),
    }
    assert not guard.envoy_filter(ef(add_lua), SCOPE).weak
    # meshward's own filter, seen as anybody's, only inserts: no finding from its content
    own = render("shop", "enforce")["objects"][0]
    assert not guard.envoy_filter(own, SCOPE).weak


def test_injection_labels() -> None:
    ns = {"metadata": {"name": "shop", "labels": {"istio-injection": "disabled"}}}
    assert fields(guard.namespace_injection(ns)) == {
        (MESH_INJECTION_DISABLED, "metadata.labels[istio-injection]", "disabled")
    }
    on = {"metadata": {"name": "shop", "labels": {"istio.io/rev": "1-24"}}}
    assert [s.field for s in guard.namespace_injection(on).strong] == [
        "metadata.labels[istio.io/rev]"
    ]
    pod = {"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}}
    (w,) = guard.pod_injection(pod)
    assert w.field == "metadata.annotations[sidecar.istio.io/inject]"


def test_inbound_ports_left_out_of_the_sidecar() -> None:
    excluded = {
        "metadata": {"annotations": {"traffic.sidecar.istio.io/excludeInboundPorts": "8080"}}
    }
    (w,) = guard.pod_injection(excluded)
    assert (w.threat, w.field, w.value) == (
        MESH_INJECTION_DISABLED,
        "metadata.annotations[traffic.sidecar.istio.io/excludeInboundPorts]",
        "8080",
    )
    only = {"metadata": {"annotations": {"traffic.sidecar.istio.io/includeInboundPorts": "9090"}}}
    assert [w.value for w in guard.pod_injection(only)] == ["9090"]
    every = {"metadata": {"annotations": {"traffic.sidecar.istio.io/includeInboundPorts": "*"}}}
    assert guard.pod_injection(every) == []


# ---- wider than the learned allowlist


def _exported(allowlist: Allowlist) -> list[dict[str, Any]]:
    return export(allowlist, lambda ns: "monitor", "authorizationpolicy").objects


LEARNED_SCOPE = Scope(frozenset({"shop"}), "istio-system")


def _scope(allowlist: Allowlist | None, missing: str = "") -> Scope:
    return dataclasses.replace(LEARNED_SCOPE, learned=Learned(allowlist, missing))


def test_istio_pattern() -> None:
    assert guard.istio_pattern("/a/b") == PathPattern(("a", "b"), False, "/a/b")
    assert guard.istio_pattern("/a/*") == PathPattern(("a",), True, "/a/*")
    assert guard.istio_pattern("/ad*") == PathPattern((ONE,), True, "/ad*")  # inside a segment
    assert guard.istio_pattern("/a/{*}/{**}") == PathPattern(("a", ONE), True, "/a/{*}/{**}")
    assert guard.istio_pattern("*.js") == PathPattern((), True, "*.js")  # a suffix: unbounded
    assert guard.istio_pattern("/*") == PathPattern((), True, "/*")
    assert guard.istio_match("cluster.local/ns/shop/*", "cluster.local/ns/shop/sa/web")
    assert not guard.istio_match("*/sa/db", "cluster.local/ns/shop/sa/web")


@settings(max_examples=120, deadline=None)
@given(learned_allowlists(), st.data())
def test_exported_policy_is_never_wider_and_widening_it_is(
    allowlist: Allowlist, data: st.DataObject
) -> None:
    scope = _scope(allowlist)
    (policy,) = _exported(allowlist)
    assert guard.authorization_policy(policy, scope).weak == ()
    rules = policy["spec"].get("rules") or []
    if not rules:
        return  # nothing Istio could carry: a deny-all policy
    i = data.draw(st.integers(0, len(rules) - 1))
    wider = copy.deepcopy(policy)
    rule = wider["spec"]["rules"][i]
    how = data.draw(st.sampled_from(["principal", "method", "path", "no-to"]))
    if how == "principal":
        rule["from"].append({"source": {"principals": ["cluster.local/ns/evil/sa/x"]}})
    elif how == "method":
        rule["to"][0]["operation"]["methods"].append("PATCH")
    elif how == "path":
        rule["to"][0]["operation"]["paths"].append("/zz/*")
    else:
        del rule["to"]
    found = guard.authorization_policy(wider, scope).weak
    assert found and all(w.threat == MESH_POLICY_WIDENED for w in found), how
    assert all(w.field.startswith(f"spec.rules[{i}]") for w in found)


def test_wider_than_learned_scoping() -> None:
    allowlist = allowlist_of(("GET", "/items/{int}", {"shop/web": 2}), destination="shop/cart")
    (policy,) = _exported(allowlist)
    rule = policy["spec"]["rules"][0]
    rule["from"][0]["source"]["principals"].append("cluster.local/ns/x/sa/y")
    (w,) = guard.authorization_policy(policy, _scope(allowlist)).weak
    assert w.field == "spec.rules[0].from[0].source.principals"
    assert w.detail == "allows principal cluster.local/ns/x/sa/y, never seen calling shop/cart"
    # learn namespaces are not watched: quiet
    learn = copy.deepcopy(policy)
    learn["metadata"]["namespace"] = "dev"
    assert guard.authorization_policy(learn, _scope(allowlist)).weak == ()
    # no selector: every learned workload of the namespace
    del policy["spec"]["selector"]
    assert [w.detail for w in guard.authorization_policy(policy, _scope(allowlist)).weak] == [
        w.detail
    ]
    # serve unreachable: only the universal rules, and their findings say so
    rule["from"][0]["source"]["principals"].append("*")
    (w,) = guard.authorization_policy(policy, _scope(None, "serve unreachable")).weak
    assert w.detail == ("any principal; not compared with the learned allowlist: serve unreachable")
    # a selector without the workload label names no learned workload: not compared
    policy["spec"]["selector"] = {"matchLabels": {"tier": "web"}}
    (w,) = guard.authorization_policy(policy, _scope(allowlist)).weak
    assert "its selector names no app label" in w.detail


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_TEXTS = st.lists(
    st.text(max_size=14) | st.sampled_from(["*", "/*", "/a/*", "*.js", "/{*}/{**}"]), max_size=4
)
_SOURCE = st.fixed_dictionaries(
    {}, optional={"principals": _TEXTS | _ANY, "namespaces": _TEXTS | _ANY, "notPrincipals": _ANY}
)
_OPERATION = st.fixed_dictionaries({}, optional={"methods": _TEXTS | _ANY, "paths": _TEXTS | _ANY})
_RULE = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(st.fixed_dictionaries({"source": _SOURCE | _ANY}) | _ANY, max_size=3)
        | _ANY,
        "to": st.lists(st.fixed_dictionaries({"operation": _OPERATION | _ANY}) | _ANY, max_size=3)
        | _ANY,
        "when": _ANY,
    },
)


@settings(max_examples=200, deadline=None)
@given(
    rules=st.lists(_RULE | _ANY, max_size=3) | _ANY,
    selector=_ANY | st.just({"matchLabels": {"app": "api"}}),
)
def test_any_policy_shape_is_compared_without_error(rules: Any, selector: Any) -> None:
    allowlist = allowlist_of(("GET", "/a/{int}", {"shop/web": 1, "unknown": 1}))
    policy = obj("AuthorizationPolicy", "shop", {"selector": selector, "rules": rules})
    for scope in (_scope(allowlist), _scope(None, "down")):
        state = guard.authorization_policy(policy, scope)
        assert all(w.threat == MESH_POLICY_WIDENED for w in state.weak)
        diff(
            "AuthorizationPolicy",
            None,
            policy,
            guard.authorization_policy(policy, LEARNED_SCOPE),
            state,
        )
