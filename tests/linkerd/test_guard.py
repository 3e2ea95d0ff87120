"""The mesh guard's Linkerd rules, without a cluster."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.app.exports import export
from meshward.core.allowlist import Allowlist
from meshward.core.meshguard import Learned, Scope
from meshward.core.threats.names import MESH_INJECTION_DISABLED, MESH_POLICY_WIDENED
from meshward.linkerd import guard
from tests.support.allowlists import allowlist_of, learned_allowlists

SCOPE = Scope(frozenset({"shop", "lab"}), "istio-system", enforcing=frozenset({"shop"}))


def obj(ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "x", "namespace": ns}, "spec": spec}


def fields(state: Any) -> set[tuple[str, str]]:
    return {(w.threat, w.field) for w in state.weak}


def test_server_access_policy() -> None:
    for policy in ("all-unauthenticated", "cluster-unauthenticated", "audit"):
        state = guard.server(obj("shop", {"accessPolicy": policy, "port": 80}), SCOPE)
        assert fields(state) == {(MESH_POLICY_WIDENED, "spec.accessPolicy")}
    for policy in ("deny", "all-authenticated", ""):
        assert not guard.server(obj("shop", {"accessPolicy": policy}), SCOPE).weak
    assert not guard.server(obj("dev", {"accessPolicy": "audit"}), SCOPE).weak
    # audit in a monitor namespace is what meshward's own Linkerd export writes there
    assert not guard.server(obj("lab", {"accessPolicy": "audit"}), SCOPE).weak
    assert guard.server(obj("lab", {"accessPolicy": "all-unauthenticated"}), SCOPE).weak


def test_authorization_policy() -> None:
    none = obj(
        "shop", {"targetRef": {"kind": "Server", "name": "web"}, "requiredAuthenticationRefs": []}
    )
    assert fields(guard.authorization_policy(none, SCOPE)) == {
        (MESH_POLICY_WIDENED, "spec.requiredAuthenticationRefs")
    }
    network = obj(
        "shop",
        {
            "targetRef": {"kind": "Server", "name": "web"},
            "requiredAuthenticationRefs": [
                {"kind": "NetworkAuthentication", "name": "all", "group": "policy.linkerd.io"}
            ],
        },
    )
    assert fields(guard.authorization_policy(network, SCOPE)) == {
        (MESH_POLICY_WIDENED, "spec.requiredAuthenticationRefs[0]")
    }
    mtls = obj(
        "shop",
        {
            "targetRef": {"kind": "Server", "name": "web"},
            "requiredAuthenticationRefs": [
                {"kind": "MeshTLSAuthentication", "name": "web", "group": "policy.linkerd.io"}
            ],
        },
    )
    assert not guard.authorization_policy(mtls, SCOPE).weak


def test_meshtls_any_identity() -> None:
    assert fields(guard.meshtls_authentication(obj("shop", {"identities": ["*"]}), SCOPE))
    named = obj("shop", {"identities": ["web.shop.serviceaccount.identity.linkerd.cluster.local"]})
    assert not guard.meshtls_authentication(named, SCOPE).weak


def test_inject_annotations() -> None:
    ns = {"metadata": {"name": "shop", "annotations": {"linkerd.io/inject": "disabled"}}}
    assert fields(guard.namespace_injection(ns)) == {
        (MESH_INJECTION_DISABLED, "metadata.annotations[linkerd.io/inject]")
    }
    on = {"metadata": {"name": "shop", "annotations": {"linkerd.io/inject": "enabled"}}}
    assert guard.namespace_injection(on).strong
    assert guard.pod_injection({"metadata": {"annotations": {"linkerd.io/inject": "disabled"}}})


def test_skipped_inbound_ports() -> None:
    pod = {"metadata": {"annotations": {"config.linkerd.io/skip-inbound-ports": "8080,9090"}}}
    (w,) = guard.pod_injection(pod)
    assert (w.field, w.value) == (
        "metadata.annotations[config.linkerd.io/skip-inbound-ports]",
        "8080,9090",
    )
    ns = {
        "metadata": {"name": "shop", "annotations": {"config.linkerd.io/skip-inbound-ports": "25"}}
    }
    assert fields(guard.namespace_injection(ns)) == {
        (MESH_INJECTION_DISABLED, "metadata.annotations[config.linkerd.io/skip-inbound-ports]")
    }


# ---- wider than the learned allowlist

Key = tuple[str, str, str]


def _exported(allowlist: Allowlist) -> dict[Key, dict[str, Any]]:
    objects = export(allowlist, lambda ns: "enforce", "linkerd").objects
    return {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}


def _judge(objects: dict[Key, dict[str, Any]], allowlist: Allowlist | None) -> list[Any]:
    scope = dataclasses.replace(
        SCOPE,
        learned=Learned(allowlist, "" if allowlist else "serve unreachable"),
        refs=lambda kind, ns, name: objects.get((kind, ns, name)),
    )
    return [
        w
        for (kind, _, _), o in sorted(objects.items())
        if kind == "AuthorizationPolicy"
        for w in guard.authorization_policy(o, scope).weak
    ]


@settings(max_examples=120, deadline=None)
@given(learned_allowlists(), st.data())
def test_exported_policy_is_never_wider_and_widening_it_is(
    allowlist: Allowlist, data: st.DataObject
) -> None:
    objects = _exported(allowlist)
    assert _judge(objects, allowlist) == []
    routes = sorted(k for k in objects if k[0] == "HTTPRoute")
    authns = sorted(k for k in objects if k[0] == "MeshTLSAuthentication")
    if not routes:
        return  # no caller Linkerd can name: the Server denies everything
    wider = copy.deepcopy(objects)
    how = data.draw(st.sampled_from(["identity", "method", "path", "server"]))
    if how == "identity":
        key = data.draw(st.sampled_from(authns))
        wider[key]["spec"]["identities"].append(
            "x.evil.serviceaccount.identity.linkerd.cluster.local"
        )
    elif how in ("method", "path"):
        rules = wider[data.draw(st.sampled_from(routes))]["spec"]["rules"]
        match = (
            {"method": "PATCH"}
            if how == "method"
            else {"path": {"type": "PathPrefix", "value": "/zz"}}
        )
        rules[0]["matches"].append(match)
    else:  # the policy targets the whole Server instead of its route: any request
        policy = next(o for k, o in wider.items() if k[0] == "AuthorizationPolicy")
        server = next(k for k in wider if k[0] == "Server")
        policy["spec"]["targetRef"] = {
            "group": "policy.linkerd.io",
            "kind": "Server",
            "name": server[2],
        }
    found = _judge(wider, allowlist)
    assert found and all(w.threat == MESH_POLICY_WIDENED for w in found), how


def test_wider_than_learned_names_the_identity() -> None:
    allowlist = allowlist_of(("GET", "/items/{int}", {"shop/web": 2}), destination="shop/cart")
    objects = _exported(allowlist)
    authn = next(o for k, o in objects.items() if k[0] == "MeshTLSAuthentication")
    authn["spec"]["identities"].append("db.shop.serviceaccount.identity.linkerd.cluster.local")
    (w,) = _judge(objects, allowlist)
    assert w.field == "spec.requiredAuthenticationRefs[0]"
    assert w.detail == (
        "allows identity db.shop.serviceaccount.identity.linkerd.cluster.local, "
        "never seen calling shop/cart"
    )
    # serve unreachable: the universal rules only (nothing universal here), no finding
    assert _judge(objects, None) == []


_ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_MATCH = st.fixed_dictionaries(
    {},
    optional={
        "method": st.text(max_size=6) | _ANY,
        "path": st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["Exact", "PathPrefix", "RegularExpression", "x"]) | _ANY,
                "value": st.text(max_size=12) | _ANY,
            },
        )
        | _ANY,
    },
)
_REFERRED = st.fixed_dictionaries(
    {},
    optional={
        "podSelector": st.just({"matchLabels": {"app": "api"}}) | _ANY,
        "parentRefs": st.lists(
            st.fixed_dictionaries({"kind": st.just("Server"), "name": st.just("x")}) | _ANY,
            max_size=2,
        )
        | _ANY,
        "rules": st.lists(
            st.fixed_dictionaries({"matches": st.lists(_MATCH | _ANY, max_size=3) | _ANY}) | _ANY,
            max_size=2,
        )
        | _ANY,
        "identities": st.lists(st.text(max_size=12) | st.just("*"), max_size=3) | _ANY,
        "identityRefs": st.lists(
            st.fixed_dictionaries(
                {
                    "kind": st.sampled_from(["ServiceAccount", "Namespace"]),
                    "name": st.text(max_size=5),
                }
            )
            | _ANY,
            max_size=2,
        )
        | _ANY,
    },
)
_REF = (
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(
                ["Server", "HTTPRoute", "MeshTLSAuthentication", "ServiceAccount", "Namespace"]
            ),
            "name": st.just("x"),
        }
    )
    | _ANY
)


@settings(max_examples=200, deadline=None)
@given(target=_REF, refs=st.lists(_REF, max_size=3) | _ANY, referred=_REFERRED)
def test_any_policy_shape_is_compared_without_error(target: Any, refs: Any, referred: Any) -> None:
    allowlist = allowlist_of(("GET", "/a/{int}", {"shop/web": 1}))
    policy = obj("shop", {"targetRef": target, "requiredAuthenticationRefs": refs})
    scope = dataclasses.replace(
        SCOPE, learned=Learned(allowlist), refs=lambda *_: {"spec": referred}
    )
    state = guard.authorization_policy(policy, scope)
    assert all(w.threat == MESH_POLICY_WIDENED for w in state.weak)
