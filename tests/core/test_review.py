"""The review's view and edits on the shared state (pure): statuses since the last review,
second-look marks, and edits that hold when replicas keep merging what they learned."""

from __future__ import annotations

import pytest

from meshward.core import review
from meshward.core.allowlist import Limits, ServiceProfile
from meshward.core.allowlist_merge import Shared, contribution, merge, profile_doc
from meshward.core.engine import Engine
from meshward.core.observation import Identity, Observation
from meshward.core.threats.inspection import NoDetector

DEST = "shop/api"
LIMITS = Limits()


def learned(calls: list[tuple[str, str, str, float]], query: str = "") -> dict:
    """A replica's engine document after learning (caller, method, path, time) calls."""
    engine = Engine(detector=NoDetector())
    for source, method, path, when in calls:
        ns, _, name = source.partition("/")
        engine.evaluate(
            Observation(
                seen_by="test",
                source=Identity(ns, name),
                destination=Identity("shop", "api"),
                method=method,
                path=path,
                query=query,
                time=when,
                status=200,
            )
        )
    p = engine.allowlist.get(DEST)
    assert p is not None
    return p.to_doc()


def rules(doc: dict) -> dict[str, dict]:
    return {f"{e['method']} {e['path']}": e for e in doc["endpoints"]}


def test_statuses_and_second_look() -> None:
    doc = learned(
        [
            ("shop/web", "GET", "/users/1", 0.0),
            ("ns/b", "GET", "/users/2", 900.0),
            ("shop/web", "POST", "/orders", 5.0),
        ]
    )
    s = contribution(doc, "r1")
    v = review.view(profile_doc(s))
    got = {f"{r['method']} {r['path']}": (r["status"], r["second_look"]) for r in v["rules"]}
    assert got == {
        "GET /users/{int}": ("new", []),
        "POST /orders": ("new", ["single-caller", "short-burst"]),
    }
    review.approve(s, None, "ann", 1000.0)
    # another replica learns a new caller of /orders: changed since the review
    s = merge(s, contribution(learned([("ns/b", "POST", "/orders", 7.0)]), "r2"))
    v = review.view(profile_doc(s))
    assert {r["path"]: r["status"] for r in v["rules"]} == {
        "/users/{int}": "approved",
        "/orders": "changed",
    }
    assert v["reviewed"] == {"by": "ann", "at": 1000.0}


def test_a_removal_holds_while_another_replica_resends_the_rule() -> None:
    doc = learned([("shop/web", "GET", "/users/1", 0.0), ("shop/web", "GET", "/items", 0.0)])
    s = review.remove(contribution(doc, "r1"), ("GET", "/users/{int}"), "ann", 10.0)
    stale = contribution(learned([("ns/b", "GET", "/users/9", 20.0)]), "r2")
    for merged in (merge(s, stale), merge(stale, s)):
        shown = profile_doc(merged)
        assert set(rules(shown)) == {"GET /items"}
        # the engine handed this document refuses to learn the rule back
        engine = Engine(detector=NoDetector())
        engine.load({DEST: shown}, {})
        profile = engine.allowlist.get(DEST)
        assert profile is not None
        assert profile.endpoint_for_learning("GET", "/users/3") is None
        assert engine.refused["removed-rule"] == 1
    with pytest.raises(review.ReviewError) as err:
        review.remove(s, ("GET", "/users/{int}"), "ann", 11.0)
    assert err.value.status == 404


def test_a_narrowing_edit_is_pinned_and_learning_never_widens_it() -> None:
    doc = learned([("shop/web", "GET", "/users/1", 0.0), ("ns/b", "GET", "/users/2", 0.0)], "v=1")
    s = contribution(doc, "r1")
    narrow = review.parse_rule({"method": "GET", "path": "/users/{int}", "sources": ["shop/web"]})
    s = review.edit(s, ("GET", "/users/{int}"), narrow, "ann", 5.0, LIMITS)
    # a replica that still learns wider content (a parameter, another caller) re-sends it
    wide = contribution(learned([("ns/c", "GET", "/users/3", 9.0)], "debug=1&v=2"), "r2")
    for merged in (merge(s, wide), merge(wide, s)):
        rule = rules(profile_doc(merged))["GET /users/{int}"]
        assert "query" not in rule and set(rule["sources"]) == {"shop/web"}
        assert rule["pinned"] is True and rule["count"] == 3  # counted, not widened
    view = review.view(profile_doc(s))
    assert view["rules"][0]["status"] == "approved"  # its editor approved it
    # the engine given the pinned rule counts requests, never widens it
    profile = ServiceProfile.from_doc(profile_doc(s))
    rule = profile.endpoint_for_learning("GET", "/users/4")
    assert rule is not None and rule.pinned
    # widening a pinned rule widens the pin
    s = review.widen(
        s,
        ("GET", "/users/{int}"),
        review.widening(("GET", "/users/{int}"), {"query": "*"}),
        "bob",
        6.0,
        LIMITS,
    )
    assert rules(profile_doc(merge(s, wide)))["GET /users/{int}"]["query"] == {"*": ["any"]}


def test_an_edit_to_another_template_replaces_the_rule_and_readmits_a_tombstone() -> None:
    doc = learned([("shop/web", "GET", "/a/1", 0.0), ("shop/web", "GET", "/b", 0.0)])
    s = review.remove(contribution(doc, "r1"), ("GET", "/b"), "ann", 1.0)
    s = review.edit(
        s,
        ("GET", "/a/{int}"),
        review.parse_rule({"method": "GET", "path": "/b"}),
        "ann",
        2.0,
        LIMITS,
    )
    assert set(rules(profile_doc(s))) == {"GET /b"}
    assert ("GET", "/a/{int}") in s.removed and ("GET", "/b") not in s.removed


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        ({"method": "GET", "path": "/x/{nope}"}, "unknown template variable '{nope}'"),
        ({"method": "GET", "path": "x"}, "must start with '/'"),
        ({"method": "G T", "path": "/x"}, "method must be letters"),
        ({"method": "GET", "path": "/x", "query": {"q": ["bogus"]}}, "unknown value class"),
        ("GET /x", "must be a mapping"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(rule: object, said: str) -> None:
    with pytest.raises(review.ReviewError) as err:
        review.parse_rule(rule)
    assert said in str(err.value) and err.value.status == 400


def test_widen_needs_something_to_add() -> None:
    for given, said in (({}, "widen needs"), ({"path": "/y"}, "not 'path'"), ({"query": 3}, '"*"')):
        with pytest.raises(review.ReviewError, match=said):
            review.widening(("GET", "/x"), given)
    assert Shared(DEST).review.mark is None
