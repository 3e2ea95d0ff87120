"""The allowlist as Linkerd policy: valid against Linkerd's CRDs, applied to a real API server
with them, and letting through what meshward learned (and not more)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshward.core.allowlist import Allowlist
from meshward.linkerd.policyexport import (
    MATCHES_PER_RULE,
    RULES_PER_ROUTE,
    linkerd_policy,
    path_match,
    rust_escape,
)
from tests.support.allowlists import allowlist_of
from tests.support.apiserver import KubeCluster
from tests.support.crdschema import LINKERD_CRDS, Validators, check_object, crd_validators
from tests.support.learned import DESTINATION, linkerd_allows, sample_engine
from tests.support.openapi_traffic import Traffic

PLURALS = {
    "Server": "servers",
    "HTTPRoute": "httproutes",
    "AuthorizationPolicy": "authorizationpolicies",
    "MeshTLSAuthentication": "meshtlsauthentications",
}


@pytest.fixture(scope="module")
def schemas() -> Validators:
    return crd_validators(LINKERD_CRDS)


def _identity(key: str) -> str:
    ns, _, account = key.partition("/")
    return f"{account}.{ns}.serviceaccount.identity.linkerd.cluster.local"


def _export(allowlist: Allowlist, mode: str = "enforce", **kw: Any) -> Any:
    return linkerd_policy(allowlist, lambda ns: mode, **kw)


def test_paths() -> None:
    assert path_match("/health") == {"type": "Exact", "value": "/health"}
    assert path_match("/") == {"type": "Exact", "value": "/"}
    m = path_match("/products/{int}/reviews")
    assert m == {"type": "RegularExpression", "value": "^/products/-?[0-9]{1,63}/reviews$"}
    rest = path_match("/static/{any}")
    assert rest is not None and re.fullmatch(rest["value"], "/static/a/b/c.js")
    uuid = path_match("/users/{uuid}")
    assert uuid is not None
    assert re.fullmatch(uuid["value"], "/users/0b6f3c38-57a1-4c62-9a89-3a4f1e2d9c10")
    assert not re.fullmatch(uuid["value"], "/users/42")
    assert path_match("/x/" + "y" * 1100) is None


def test_regex_metacharacters_in_literals_are_escaped() -> None:
    hostile = "a.b+c(d)|e[f]{g}^h$i#j&k-l~m*n?o\\p"
    m = path_match(f"/{hostile}/{{int}}")
    assert m is not None
    assert re.fullmatch(m["value"], f"/{hostile}/7")
    assert not re.fullmatch(m["value"], "/aXb+c(d)|e[f]{g}^h$i#j&k-l~m*n?o\\p/7")
    assert rust_escape("a.b") == "a\\.b"


def test_learned_traffic_exports_valid_objects_that_allow_it(schemas: Validators) -> None:
    engine = sample_engine()
    export = linkerd_policy(engine.allowlist, engine.mode_of)
    objects = export.objects
    assert export.notes == []
    for obj in objects:
        check_object(schemas, obj)
        assert obj["metadata"]["namespace"] == "shop"
        assert obj["metadata"]["labels"]["meshward.io/export"] == "linkerd"  # what --prune takes
    kinds = Counter(o["kind"] for o in objects)
    assert kinds["Server"] == 1
    groups = kinds["MeshTLSAuthentication"]
    assert groups >= 5 and kinds["HTTPRoute"] == groups == kinds["AuthorizationPolicy"]
    (server,) = [o for o in objects if o["kind"] == "Server"]
    assert server["spec"] == {
        "podSelector": {"matchLabels": {"app": "api"}},
        "port": "http",
        "accessPolicy": "deny",
    }
    held_out = Traffic(seed=99)
    for _ in range(1000):
        obs = held_out.normal()
        assert linkerd_allows(objects, _identity(obs.source.key), obs.method, obs.path), (
            obs.source.key,
            obs.method,
            obs.path,
        )
    bad = Traffic(seed=1234)
    for kind in ("unknown-endpoint", "wrong-method", "unknown-caller"):
        for _ in range(200):
            obs = bad.deviation(kind)
            assert not linkerd_allows(objects, _identity(obs.source.key), obs.method, obs.path)
    # typed variables keep their class: a word where an id was learned matches no route
    assert not linkerd_allows(objects, _identity("shop/web"), "GET", "/products/shoes")
    assert not linkerd_allows(objects, _identity("shop/admin"), "GET", "/health")


def test_monitor_namespaces_audit_with_a_catch_all_route(schemas: Validators) -> None:
    engine = sample_engine(mode="monitor")
    objects = linkerd_policy(engine.allowlist, engine.mode_of, port="8080").objects
    (server,) = [o for o in objects if o["kind"] == "Server"]
    assert server["spec"]["accessPolicy"] == "audit" and server["spec"]["port"] == 8080
    (catch_all,) = [o for o in objects if o["metadata"]["name"] == "meshward-api-unlearned"]
    assert catch_all["spec"]["rules"] == [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}
    ]
    targets = {
        o["spec"]["targetRef"]["name"] for o in objects if o["kind"] == "AuthorizationPolicy"
    }
    assert "meshward-api-unlearned" not in targets  # unauthorized: the Server's audit decides
    for obj in objects:
        check_object(schemas, obj)


def test_no_callers_leaves_a_server_that_denies_everything() -> None:
    export = _export(allowlist_of(("GET", "/x", {"unknown": 3})))
    assert [o["kind"] for o in export.objects] == ["Server"]
    assert not linkerd_allows(export.objects, "", "GET", "/x")
    assert [n.why for n in export.notes] == [
        "caller 'unknown' has no identity",
        "left out: no caller Linkerd can name",
        "no rule Linkerd can carry: the Server denies every request",
    ]


def test_methods_httproute_cannot_match_are_left_out() -> None:
    export = _export(
        allowlist_of(("BREW", "/pot", {"shop/web": 1}), ("GET", "/a", {"shop/web": 1}))
    )
    assert linkerd_allows(export.objects, _identity("shop/web"), "GET", "/a")
    assert not linkerd_allows(export.objects, _identity("shop/web"), "BREW", "/pot")
    assert [n.what for n in export.notes] == ["BREW /pot"]


def test_many_rules_fill_routes_within_the_crd_bounds(schemas: Validators) -> None:
    n = 200  # 400 matches with HEAD: 4 routes of at most 16 x 8
    export = _export(allowlist_of(*[("GET", f"/r{i}", {"shop/web": 1}) for i in range(n)]))
    routes = [o for o in export.objects if o["kind"] == "HTTPRoute"]
    assert len(routes) == -(-2 * n // (MATCHES_PER_RULE * RULES_PER_ROUTE))
    assert len({r["metadata"]["name"] for r in routes}) == len(routes)
    for obj in export.objects:
        check_object(schemas, obj)
    assert linkerd_allows(export.objects, _identity("shop/web"), "HEAD", f"/r{n - 1}")


@pytest.mark.parametrize("destination", ["api.example.com", "Shop/Api", "shop/a_b", "shop/api\n"])
def test_hostile_destinations_are_noted_not_exported(destination: str) -> None:
    export = _export(allowlist_of(("GET", "/x", {"shop/web": 1}), destination=destination))
    assert export.objects == [] and len(export.notes) == 1


@pytest.fixture(scope="module")
def linkerd_crds(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Linkerd's policy CRDs on the 1.20 test server: its HTTPRoute CRD's `default: ""` lines
    are refused there ("must be of type string: null"), so they go (../shared/KUBERNETES.md)."""
    if not LINKERD_CRDS.exists():
        pytest.skip(f"{LINKERD_CRDS} missing")
    text = "\n".join(
        line for line in LINKERD_CRDS.read_text().splitlines() if line.strip() != 'default: ""'
    )
    path: Path = tmp_path_factory.mktemp("linkerd") / "crds.yaml"
    path.write_text(text)
    kube_cluster.kubectl("apply", "--validate=false", "-f", str(path))
    for plural in PLURALS.values():
        kube_cluster.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{plural}.policy.linkerd.io",
            "--timeout=30s",
        )


@pytest.mark.integration
def test_objects_apply_to_a_real_api_server(
    kube_cluster: KubeCluster, linkerd_crds: None, kube_namespace: str
) -> None:
    from kubernetes import client

    allowlist = Allowlist()
    allowlist.import_doc(sample_engine().allowlist.export_doc())
    profile = allowlist.services.pop(DESTINATION)
    profile.destination = f"{kube_namespace}/api"
    allowlist.services[profile.destination] = profile
    objects = _export(allowlist, mode="monitor").objects
    with kube_cluster.api_client() as api:
        custom = client.CustomObjectsApi(api)
        for obj in objects:
            group, version = obj["apiVersion"].split("/")
            custom.create_namespaced_custom_object(
                group, version, kube_namespace, PLURALS[obj["kind"]], obj
            )
        for obj in objects:
            group, version = obj["apiVersion"].split("/")
            live = custom.get_namespaced_custom_object(
                group, version, kube_namespace, PLURALS[obj["kind"]], obj["metadata"]["name"]
            )
            for key, value in obj["spec"].items():  # the server may add defaults, never drop
                assert _within(value, live["spec"][key]), (obj["kind"], key)


def _within(want: Any, got: Any) -> bool:
    """`want` is in `got`, where `got` may carry defaults the server added."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(
            k in got and _within(v, got[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(_within, want, got))
    return bool(want == got)
