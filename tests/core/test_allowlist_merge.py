"""The replicas' merge is a join: commutative, associative, idempotent, bounded; tombstones win;
per-replica counters make a repeated update count once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.allowlist import Allowlist, EndpointRule, Limits, ServiceProfile
from meshward.core.allowlist_merge import (
    Counters,
    RuleCounters,
    Seen,
    Shared,
    compact,
    contribution,
    from_object,
    merge,
    profile_doc,
    retire,
    to_object,
)
from meshward.core.pathvalues import PathShape
from meshward.core.review import digest
from meshward.core.reviewstate import Review, Stamp

DEST = "shop/api"
LIMITS = Limits(
    max_endpoints=4, max_sources=3, max_params=2, max_body_fields=2, max_content_types=2
)
KEYS = [(m, p) for m in ("GET", "POST") for p in ("/a", "/b", "/c/{int}", "/d", "/e/{str}")]
CLASSES = st.sets(
    st.sampled_from(
        ["int", "word", "uuid", "hex", "text", "email", "token", "date", "float", "bool", "null"]
    ),
    min_size=1,
    max_size=4,
)
NAMES = st.sampled_from(["ns/x", "ns/y", "ns/z", "ns/w"])
seen = st.builds(
    Seen,
    st.integers(0, 50),
    st.sampled_from([0.0, 1.0, 2.0, 3.0]),
    st.sampled_from([0.0, 4.0, 5.0]),
)


SEGMENTS = ["u-83hd72", "u-0a9x1c", "ord-5f2k9q", "red-q1.pdf", "Admin", "x_y", "é"]

# Strategies are built once here, not inside the composites: hypothesis validates a strategy
# on its first draw, and building them per draw made these tests spend most of their time there.
SEGMENT_LISTS = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4)
RULE_SOURCES = st.sets(NAMES, max_size=3)
QUERIES = st.dictionaries(st.sampled_from(["id", "q", "page"]), CLASSES, max_size=3)
BODIES = st.dictionaries(st.sampled_from(["a", "b.c", "d[]"]), CLASSES, max_size=2)
CONTENT_TYPES = st.sets(
    st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])
)
STATUSES = st.sets(st.sampled_from(["2xx", "4xx", "5xx"]))
SIZE_LOW = st.integers(-1, 5)
SIZE_SPAN = st.integers(0, 3)
ONE_IN_SIX = st.integers(0, 5)
ONE_IN_FOUR = st.integers(0, 3)
RULE_KEYS = st.sets(st.sampled_from(KEYS), max_size=5)
REMOVED_KEYS = st.sets(st.sampled_from(KEYS), max_size=2)
REPLICA_IDS = st.sets(st.sampled_from(["r1", "r2", "r3"]), max_size=3)
SOURCE_COUNTS = st.integers(0, 9)


@st.composite
def shapes(draw: st.DrawFn) -> PathShape:
    if draw(ONE_IN_SIX) == 0:
        return PathShape.opened()
    shape = PathShape()
    for value in draw(SEGMENT_LISTS):
        shape.learn(value)
    return shape


SHAPES = shapes()


@st.composite
def rules(draw: st.DrawFn, key: tuple[str, str]) -> EndpointRule:
    r = EndpointRule(*key)
    r.sources = dict.fromkeys(draw(RULE_SOURCES), 0)
    r.query = draw(QUERIES)
    r.body = draw(BODIES)
    r.content_types = draw(CONTENT_TYPES)
    r.statuses = draw(STATUSES)
    lo = draw(SIZE_LOW)
    r.size_min, r.size_max = (lo, lo + draw(SIZE_SPAN)) if lo >= 0 else (-1, -1)
    r.open_query = draw(st.booleans())
    if key[1].endswith("{str}"):
        r.path_values = {1: draw(SHAPES)}
    return r


RULES = {k: rules(k) for k in KEYS}


@st.composite
def states(draw: st.DrawFn) -> Shared:
    s = Shared(DEST)
    for k in draw(RULE_KEYS):
        s.rules[k] = draw(RULES[k])
    s.sources = draw(RULE_SOURCES)
    s.removed = draw(REMOVED_KEYS)
    for rid in draw(REPLICA_IDS):
        c = Counters(draw(seen))
        c.sources = {n: draw(seen) for n in s.sources}
        c.rules = {
            k: RuleCounters(draw(seen), {n: draw(SOURCE_COUNTS) for n in s.rules[k].sources})
            for k in s.rules
        }
        s.replicas[rid] = c
    if draw(ONE_IN_FOUR) == 0:  # people's decisions (a join of their own: below)
        s.review = draw(reviews(pins=False))
    return s


STAMPS = st.builds(
    Stamp, st.sampled_from([1.0, 2.0, 3.0]), st.sampled_from(["ann", "bob"]), st.just("")
)


MAYBE_STAMP = st.none() | STAMPS
APPROVED_KEYS = st.sets(st.sampled_from(KEYS), max_size=3)
PINNED_KEYS = st.sets(st.sampled_from(KEYS), max_size=2)
PIN_TIMES = st.sampled_from([1.0, 2.0])


@st.composite
def reviews(draw: st.DrawFn, pins: bool = True) -> Review:
    """People's decisions (core/reviewstate.py): registers that replicas merge as a join too."""
    r = Review(draw(MAYBE_STAMP))
    for k in draw(APPROVED_KEYS):
        r.approved[k] = draw(STAMPS)
    for k in draw(REMOVED_KEYS):
        r.removed[k] = draw(STAMPS)
    for k in draw(PINNED_KEYS) if pins else ():
        rule = draw(RULES[k]).to_doc(stats=False)
        r.pinned[k] = (Stamp(draw(PIN_TIMES), "ann", digest(rule)), rule)
    return r


@settings(max_examples=100, deadline=None)
@given(reviews(), reviews(), reviews())
def test_review_state_is_a_join(a: Review, b: Review, c: Review) -> None:
    assert a.join(b).to_doc() == b.join(a).to_doc()
    assert a.join(b).join(c).to_doc() == a.join(b.join(c)).to_doc()
    assert a.join(a).to_doc() == a.to_doc() and a.join(b).join(b).to_doc() == a.join(b).to_doc()
    # through the stored object and back, pinned rules shown as written
    s = Shared(DEST, review=a.join(b))
    assert same(from_object(to_object(s)).shared, s)
    shown = {(e["method"], e["path"]): e for e in profile_doc(s)["endpoints"]}
    assert set(shown) == set(s.review.pinned)
    assert all(e["pinned"] is True for e in shown.values())


def same(a: Shared, b: Shared) -> bool:
    return to_object(a) == to_object(b)


@settings(max_examples=150, deadline=None)
@given(states(), states())
def test_commutative(a: Shared, b: Shared) -> None:
    assert same(merge(a, b, LIMITS), merge(b, a, LIMITS))


@settings(max_examples=150, deadline=None)
@given(states(), states(), states())
def test_associative(a: Shared, b: Shared, c: Shared) -> None:
    left = merge(merge(a, b, LIMITS), c, LIMITS)
    right = merge(a, merge(b, c, LIMITS), LIMITS)
    assert same(left, right)


@settings(max_examples=150, deadline=None)
@given(states(), states())
def test_idempotent_and_absorbing(a: Shared, b: Shared) -> None:
    ab = merge(a, b, LIMITS)
    aa = merge(a, a, LIMITS)
    assert same(merge(aa, aa, LIMITS), aa)
    assert same(merge(ab, b, LIMITS), ab)  # the same update merged twice counts once
    assert same(merge(ab, ab, LIMITS), ab)


@settings(max_examples=150, deadline=None)
@given(states(), states())
def test_tombstones_win_and_bounds_hold(a: Shared, b: Shared) -> None:
    m = merge(a, b, LIMITS)
    doc = profile_doc(m)
    shown = {(e["method"], e["path"]) for e in doc["endpoints"]}
    assert not shown & (a.removed | b.removed)
    assert len(m.rules) <= LIMITS.max_endpoints
    assert len(m.sources) <= LIMITS.max_sources
    for r in m.rules.values():
        assert len(r.query) <= LIMITS.max_params and len(r.body) <= LIMITS.max_body_fields
        assert len(r.sources) <= LIMITS.max_sources
        assert len(r.content_types) <= LIMITS.max_content_types
    # the document round-trips through the stored object and loads into an allowlist
    assert same(from_object(to_object(m)).shared, m)
    Allowlist().import_doc({"services": [doc]})


@settings(max_examples=100, deadline=None)
@given(states())
def test_compact_forgets_tombstoned_content(a: Shared) -> None:
    c = compact(a)
    assert not set(c.rules) & a.removed
    assert profile_doc(c)["endpoints"] == profile_doc(a)["endpoints"]


# ---- from engine documents


def learned(paths: list[str], n: int = 1, source: str = "ns/web", at: float = 100.0) -> dict:
    p = ServiceProfile(DEST)
    for path in paths:
        for i in range(n):
            p.learn_source(source, at + i)
            p.seen.hit(at + i)
            rule = p.endpoint_for_learning("GET", path)
            assert rule is not None
            rule.seen.hit(at + i)
            rule.sources[source] = rule.sources.get(source, 0) + 1
    return p.to_doc()


def endpoints(doc: dict) -> dict[str, int]:
    return {e["path"]: e["count"] for e in doc["endpoints"]}


def test_two_replicas_union_and_counts() -> None:
    a = contribution(learned(["/x", "/shared"], 2), "r1")
    b = contribution(learned(["/y", "/shared"], 3, source="ns/job"), "r2")
    doc = profile_doc(merge(a, b))
    assert endpoints(doc) == {"/shared": 5, "/x": 2, "/y": 3}
    shared = next(e for e in doc["endpoints"] if e["path"] == "/shared")
    assert shared["sources"] == {"ns/job": 3, "ns/web": 2}
    assert doc["count"] == 4 + 6  # profile hits: 2 paths x 2 on r1, 2 x 3 on r2
    assert set(doc["sources"]) == {"ns/web", "ns/job"}


def test_a_replica_that_loaded_others_counts_only_its_own_learning() -> None:
    """The engine's counts include what it loaded; its counter is what it added to that."""
    stored = merge(contribution(learned(["/x"], 5), "r2"), Shared(DEST))
    engine = ServiceProfile.from_doc(profile_doc(stored))  # r1 loads the shared view
    rule = engine.match("GET", "/x").rule
    assert rule is not None
    for i in range(3):
        rule.seen.hit(200.0 + i)
    mine = contribution(engine.to_doc(), "r1", base=stored)
    after = merge(stored, mine)
    assert endpoints(profile_doc(after)) == {"/x": 8}
    again = merge(after, contribution(engine.to_doc(), "r1", base=stored))  # saved twice
    assert endpoints(profile_doc(again)) == {"/x": 8}


def test_tombstone_stays_while_a_replica_keeps_learning_and_its_removal_readmits() -> None:
    stored = merge(contribution(learned(["/x", "/admin"]), "r1"), Shared(DEST))
    stored.removed.add(("GET", "/admin"))  # a person removed it
    stored = compact(stored)
    for n in (2, 3, 4):  # r2 keeps learning /admin
        stored = compact(merge(stored, contribution(learned(["/admin"], n), "r2")))
        assert endpoints(profile_doc(stored)) == {"/x": 1}
    stored.removed.clear()  # the tombstone is deleted: learning counts again
    stored = merge(stored, contribution(learned(["/admin"], 5), "r2"))
    assert endpoints(profile_doc(stored)) == {"/x": 1, "/admin": 5}


def test_bad_hand_edited_rule_is_reported_and_the_others_stay() -> None:
    obj = to_object(contribution(learned(["/x", "/y"]), "r1"))
    obj["spec"]["rules"].append({"method": "GET", "path": "no-slash"})
    obj["spec"]["rules"].append({"method": "GET", "path": "/z", "query": {"id": ["bogus"]}})
    parsed = from_object(obj)
    assert len(parsed.problems) == 2 and len(parsed.bad_rules) == 2
    assert {k[1] for k in parsed.shared.rules} == {"/x", "/y"}


@settings(max_examples=100, deadline=None)
@given(states(), st.sets(st.sampled_from(["r1", "r2", "r3"])))
def test_retiring_gone_replicas_keeps_the_sums(a: Shared, live: set[str]) -> None:
    r = retire(a, live)
    assert set(r.replicas) <= live | {"retired"}
    assert profile_doc(r) == profile_doc(a)
    assert same(retire(r, live), r)
