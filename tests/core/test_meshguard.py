"""The mesh guard's pure logic: diffs of two object states, who changed a field (managedFields),
deduplication, and the finding's wire form."""

from __future__ import annotations

from typing import Any

import pytest

from meshward.core.meshguard import (
    ABSENT,
    DELETED,
    ONE,
    Finding,
    Grant,
    Learned,
    Learnt,
    Operation,
    PathPattern,
    Reported,
    Scope,
    Source,
    State,
    Strength,
    Weakness,
    changed_by,
    diff,
    guarded,
    template_pattern,
    value_at,
    wider_than_learned,
)
from meshward.core.threats.names import MESH_MTLS_WEAKENED, MESH_POLICY_WIDENED, THREAT_NAMES
from tests.support.allowlists import allowlist_of


def pa(mode: str, managed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": {
            "name": "default",
            "namespace": "shop",
            "uid": "u1",
            "managedFields": managed or [],
        },
        "spec": {"mtls": {"mode": mode}},
    }


def entry(manager: str, time: str, fields: dict[str, Any], op: str = "Update") -> dict[str, Any]:
    return {"manager": manager, "operation": op, "time": time, "fieldsV1": fields}


MODE_FIELDS = {"f:spec": {"f:mtls": {"f:mode": {}}}}


def weak(mode: str) -> State:
    if mode in ("PERMISSIVE", "DISABLE"):
        return State((Weakness(MESH_MTLS_WEAKENED, "spec.mtls.mode", mode),), (), ("shop",))
    return State((), (Strength(MESH_MTLS_WEAKENED, "spec.mtls.mode", mode),), ("shop",))


def test_value_at_paths() -> None:
    obj = {
        "metadata": {"labels": {"istio.io/rev": "1-24"}},
        "spec": {"rules": [{"to": [{"operation": {"paths": ["*"]}}]}]},
    }
    assert value_at(obj, "metadata.labels[istio.io/rev]") == "1-24"
    assert value_at(obj, "spec.rules[0].to[0].operation.paths") == '["*"]'
    assert value_at(obj, "spec.rules[3]") == ABSENT
    assert value_at(None, "spec") == DELETED


def test_weakening_then_clearing() -> None:
    old = pa("STRICT", [entry("admin-apply", "2026-01-01T00:00:00Z", MODE_FIELDS, "Apply")])
    new = pa(
        "PERMISSIVE",
        [
            entry("admin-apply", "2026-01-01T00:00:00Z", {"f:metadata": {}}, "Apply"),
            entry("mallory-tool", "2026-01-01T00:05:00Z", MODE_FIELDS),
        ],
    )
    (f,) = [x for x in diff("PeerAuthentication", old, new, weak("STRICT"), weak("PERMISSIVE"))]
    assert (f.threat, f.field, f.old, f.new, f.cleared) == (
        MESH_MTLS_WEAKENED,
        "spec.mtls.mode",
        "STRICT",
        "PERMISSIVE",
        False,
    )
    assert f.by.startswith("mallory-tool (Update 2026-01-01T00:05:00Z")
    assert f.affects == ("shop",) and f.uid == "u1"
    assert "STRICT -> PERMISSIVE" in f.message() and "mallory-tool" in f.message()
    back = diff("PeerAuthentication", new, old, weak("PERMISSIVE"), weak("STRICT"))
    assert [(x.cleared, x.old, x.new) for x in back] == [(True, "PERMISSIVE", "STRICT")]


def test_a_strength_lost_by_deletion_has_no_author() -> None:
    old = pa("STRICT")
    (f,) = diff("PeerAuthentication", old, None, weak("STRICT"), State())
    assert (f.old, f.new, f.cleared) == ("STRICT", DELETED, False)
    assert f.by.startswith("unknown") and "audit log" in f.by


def test_unchanged_weakness_is_no_news() -> None:
    a, b = pa("PERMISSIVE"), pa("PERMISSIVE")
    b["metadata"]["labels"] = {"team": "x"}
    assert diff("PeerAuthentication", a, b, weak("PERMISSIVE"), weak("PERMISSIVE")) == []
    # DISABLE after PERMISSIVE is a new value of the same field: reported
    (f,) = diff("PeerAuthentication", a, pa("DISABLE"), weak("PERMISSIVE"), weak("DISABLE"))
    assert (f.old, f.new) == ("PERMISSIVE", "DISABLE")


def test_changed_by_removed_field_names_the_latest_operation() -> None:
    obj = {
        "metadata": {
            "managedFields": [
                entry("creator", "2026-01-01T00:00:00Z", {"f:spec": {"f:x": {}}}),
                entry("kubectl-label", "2026-01-02T00:00:00Z", {"f:metadata": {"f:labels": {}}}),
            ]
        }
    }
    text = changed_by(obj, "metadata.labels[istio-injection]")
    assert text.startswith("kubectl-label")  # owns metadata.labels (deepest known owner)
    none = changed_by(obj, "status.phase")
    assert none.startswith("kubectl-label") and "latest operation" in none
    assert changed_by({"metadata": {}}, "spec") == "unknown (no managedFields)"


def test_atomic_list_is_owned_whole() -> None:
    obj = {
        "metadata": {
            "managedFields": [
                entry("a", "2026-01-01T00:00:00Z", {"f:spec": {"f:rules": {}}}),
                entry("b", "2026-01-03T00:00:00Z", {"f:spec": {"f:action": {}}}),
            ]
        }
    }
    assert changed_by(obj, "spec.rules[0].from").startswith("a (")


def test_reported_dedups_and_forgets_on_clear() -> None:
    r = Reported(size=3)
    f = Finding(
        MESH_MTLS_WEAKENED, "PA", "shop", "default", "spec.mtls.mode", "STRICT", "DISABLE", "x"
    )
    assert r.fresh([f]) == [f]
    assert r.fresh([f]) == []  # a relist, an unrelated edit
    cleared = Finding(
        MESH_MTLS_WEAKENED,
        "PA",
        "shop",
        "default",
        "spec.mtls.mode",
        "DISABLE",
        "STRICT",
        "x",
        cleared=True,
    )
    assert r.fresh([cleared]) == [cleared]
    assert r.fresh([cleared]) == []  # nothing left to clear
    assert r.fresh([f]) == [f]  # relapse: news again
    for i in range(10):  # bounded
        r.fresh([Finding(MESH_POLICY_WIDENED, "AP", "ns", f"p{i}", "spec.rules[0]", "", "{}", "")])
    assert len(r) == 3


def test_finding_wire_form_is_checked() -> None:
    f = Finding(
        MESH_MTLS_WEAKENED,
        "PeerAuthentication",
        "shop",
        "default",
        "spec.mtls.mode",
        "STRICT",
        "PERMISSIVE",
        "kubectl (Update)",
        affects=("shop",),
    )
    assert Finding.from_dict(f.as_dict()) == f
    for bad in (
        {**f.as_dict(), "threat": "SQL.Injection"},  # not a configuration finding
        {**f.as_dict(), "name": 5},
        {**f.as_dict(), "new": "x\x00y"},
        {**f.as_dict(), "old": "x" * 5000},
        {**f.as_dict(), "cleared": "yes"},
        {**f.as_dict(), "name": ""},
        "a string",
    ):
        with pytest.raises(ValueError):
            Finding.from_dict(bad)
    assert f.threat in THREAT_NAMES


def test_scope_and_guarded_modes() -> None:
    assert guarded({"meshward.io/mode": "monitor"}) and guarded({"meshward.io/mode": "enforce"})
    assert not guarded({"meshward.io/mode": "learn"}) and not guarded({})
    s = Scope(frozenset({"a", "b"}), "istio-system")
    assert s.affects("a") == ("a",) and s.affects("c") == ()
    assert s.affects("istio-system", mesh_wide=True) == ("a", "b")
    assert s.affects("istio-system") == ()


def test_numbered_map_keys() -> None:
    """portLevelMtls is a map keyed by port numbers: `[8080]` is a key there, not an index."""
    obj = {
        "metadata": {
            "managedFields": [
                entry("alice", "2026-01-01T00:00:00Z", {"f:spec": {"f:mtls": {"f:mode": {}}}}),
                entry(
                    "eve",
                    "2026-01-01T00:00:00Z",
                    {"f:spec": {"f:portLevelMtls": {"f:8080": {"f:mode": {}}}}},
                ),
            ]
        },
        "spec": {"portLevelMtls": {"8080": {"mode": "DISABLE"}}},
    }
    assert value_at(obj, "spec.portLevelMtls[8080].mode") == "DISABLE"
    assert changed_by(obj, "spec.portLevelMtls[8080].mode").startswith("eve (")


# ---- wider than learned


def test_path_pattern_covers() -> None:
    users = template_pattern("/users/{int}")
    assert users.segments == ("users", ONE) and not users.rest
    assert users.covers(PathPattern(("users", "7")))
    assert users.covers(PathPattern(("users", ONE)))
    assert not users.covers(PathPattern(("users", "")))  # `/users/`: no segment to match
    assert not users.covers(PathPattern(("users",), True))  # `/users/*` reaches deeper
    assert not users.covers(PathPattern(("users", "7", "x")))
    under = template_pattern("/admin/{any}")
    assert under.rest and under.covers(PathPattern(("admin",), True))
    assert under.covers(PathPattern(("admin", "x", ONE)))
    assert not under.covers(PathPattern(("other",), True))
    assert template_pattern("/{any}").covers(PathPattern((), True))


LEARNED = allowlist_of(
    ("GET", "/users/{int}", {"shop/web": 3}),
    ("POST", "/orders", {"shop/web": 1, "pay/billing": 2}),
    destination="shop/cart",
)
PROFILE = Learnt.of(LEARNED.get("shop/cart"), template_pattern)


def grant(callers: dict[str, frozenset[str]], *ops: Operation) -> Grant:
    sources = tuple(
        Source("spec.rules[0].from[0].source.principals", v, "principal", c)
        for v, c in callers.items()
    )
    return Grant("spec.rules[0]", sources, ops or None, "spec.rules[0].to")


def op(methods: tuple[str, ...] | None, *paths: str) -> Operation:
    patterns = tuple(template_pattern(p) for p in paths) or None
    return Operation("spec.rules[0].to[0].operation", methods, patterns)


WEB = {"p/web": frozenset({"shop/web"})}


def test_narrower_or_equal_grants_raise_nothing() -> None:
    assert wider_than_learned(grant(WEB, op(("GET",), "/users/{int}")), "shop/cart", PROFILE) == []
    # HEAD rides on a learned GET, as meshward's matching has it
    assert wider_than_learned(grant(WEB, op(("HEAD",), "/users/7")), "shop/cart", PROFILE) == []
    both = {"p/web": frozenset({"shop/web"}), "p/billing": frozenset({"pay/billing"})}
    assert wider_than_learned(grant(both, op(("POST",), "/orders")), "shop/cart", PROFILE) == []


def test_each_widening_is_named() -> None:
    def wide(g: Grant) -> dict[str, str]:
        return {w.field: w.detail for w in wider_than_learned(g, "shop/cart", PROFILE)}

    stranger = {"cluster.local/ns/x/sa/y": frozenset()}
    found = wide(grant({**WEB, **stranger}, op(("GET",), "/users/{int}")))
    assert found == {
        "spec.rules[0].from[0].source.principals": "allows principal cluster.local/ns/x/sa/y, "
        "never seen calling shop/cart"
    }
    found = wide(grant(WEB, op(("GET", "DELETE"), "/users/{int}")))
    assert found == {
        "spec.rules[0].to[0].operation.methods": "allows method DELETE, never learned for shop/cart"
    }
    admin = Operation(
        "spec.rules[0].to[0].operation", ("GET",), (PathPattern(("admin",), True, "/admin/*"),)
    )
    assert wide(grant(WEB, admin)) == {
        "spec.rules[0].to[0].operation.paths": "allows paths /admin/*, no learned template of "
        "shop/cart covers it"
    }
    # each part learned, never together: billing only ever POSTed /orders
    billing = {"p/billing": frozenset({"pay/billing"})}
    found = wide(grant(billing, op(("GET",), "/users/{int}")))
    assert found == {
        "spec.rules[0].to[0].operation": "allows pay/billing GET /users/{int}, never learned "
        "together for shop/cart"
    }
    # no `to`: any method on any path
    assert wide(grant(WEB)) == {"spec.rules[0].to": "allows any method on any path of shop/cart"}
    # a workload nothing was learned for: all it admits is wider, and said so
    nothing = wider_than_learned(grant(WEB, op(("GET",), "/users/1")), "shop/new", Learnt())
    assert {w.field for w in nothing} == {
        "spec.rules[0].from[0].source.principals",
        "spec.rules[0].to[0].operation.methods",
        "spec.rules[0].to[0].operation.paths",
    }
    assert all("nothing learned for shop/new" in w.detail for w in nothing)


def test_learned_says_when_not_compared() -> None:
    assert Learned(LEARNED).not_compared() == ""
    assert Learned(None, "serve unreachable").not_compared() == (
        "not compared with the learned allowlist: serve unreachable"
    )
    assert Learned(LEARNED).destinations("shop") == ["shop/cart"]
    assert Learned(LEARNED).destinations("pay") == []


def test_a_long_or_odd_detail_still_reaches_serve() -> None:
    """A detail quotes what the policy holds: serve must still take the finding."""
    odd = "cluster.local/ns/x/sa/\u202e" + "y" * 400
    sources = (Source("spec.rules[0].from[0].source.principals", odd, "principal", frozenset()),)
    (w,) = wider_than_learned(Grant("spec.rules[0]", sources, ()), "shop/cart", PROFILE)
    new = {"apiVersion": "v1", "kind": "AuthorizationPolicy", "metadata": {"name": "p"}}
    (f,) = diff("AuthorizationPolicy", None, new, State(), State((w,)))
    assert Finding.from_dict(f.as_dict()) == f
    assert "?" in f.detail and f.detail.endswith("...")
