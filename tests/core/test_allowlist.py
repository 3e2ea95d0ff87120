"""Templating and matching invariants of the allowlist trie."""

from __future__ import annotations

import json
import pickle
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core import allowlist as allowlist_mod
from meshward.core import templates, values
from meshward.core.allowlist import Allowlist, Limits, ServiceProfile
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Identity, Observation, Threat
from meshward.core.threats.inspection import Inspection

segment = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)
paths = st.lists(segment, min_size=0, max_size=6).map(lambda s: "/" + "/".join(s))
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE"])


def obs(
    method: str, path: str, source: str = "ns/a", query: str = "", body: bytes = b""
) -> Observation:
    headers = [("content-type", "application/json")] if body else []
    return Observation(
        "file",
        source=Identity.parse(source),
        destination=Identity.parse("ns/api"),
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=body,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(methods, paths), min_size=1, max_size=40))
def test_everything_learned_matches_afterwards(requests: list[tuple[str, str]]) -> None:
    profile = ServiceProfile("ns/api", Limits(cardinality_k=4))
    for method, path in requests:
        assert profile.endpoint_for_learning(method, path) is not None
    for method, path in requests:
        m = profile.match(method, path)
        assert m.rule is not None, (method, path, [r.name for r in profile.rules()])
        assert m.rule.method == method


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(methods, paths), min_size=1, max_size=30))
def test_export_import_round_trip_keeps_matching(requests: list[tuple[str, str]]) -> None:
    a = Allowlist(Limits(cardinality_k=4))
    for method, path in requests:
        a.profile("ns/api").endpoint_for_learning(method, path)
    b = Allowlist()
    b.import_doc(a.export_doc())
    assert b.export_doc() == a.export_doc()
    for method, path in requests:
        assert b.get("ns/api").match(method, path).rule is not None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(methods, paths), min_size=1, max_size=30))
def test_a_pickled_profile_is_the_same_profile_without_its_refusal_hook(
    requests: list[tuple[str, str]],
) -> None:
    """serve and its ingest worker hand profiles over pickled (meshward.app.batchjudge)."""
    refused: list[str] = []
    profile = ServiceProfile(
        "ns/api", Limits(cardinality_k=4, max_sources=1), lambda what, _: refused.append(what)
    )
    for i, (method, path) in enumerate(requests):
        profile.learn_source(f"ns/web{i % 2}", 1_700_000_000.123456 + i)
        assert profile.endpoint_for_learning(method, path) is not None
    copy = pickle.loads(pickle.dumps(profile, pickle.HIGHEST_PROTOCOL))
    assert copy.to_doc() == profile.to_doc()
    assert copy.seen == profile.seen and copy.sources == profile.sources  # not rounded
    for method, path in requests:
        assert copy.match(method, path) == profile.match(method, path)
    copy.learn_source("ns/other", 1.0)  # past max_sources: the copy's hook is a no-op
    assert copy.dropped == profile.dropped + 1 and refused == ["source-cap"] * profile.dropped


@given(st.integers(min_value=0, max_value=10**12), st.uuids())
def test_typed_segments_become_variables(n: int, u: object) -> None:
    assert templates.segment_variable(str(n)) == "{int}"
    assert templates.segment_variable(str(u)) == "{uuid}"


def test_cardinality_generalises_and_bounds_rule_count() -> None:
    profile = ServiceProfile("ns/api", Limits(cardinality_k=8))
    for i in range(5000):
        profile.endpoint_for_learning("GET", f"/files/rp{chr(103 + i % 20)}{i % 997}/raw")
    names = [r.name for r in profile.rules()]
    assert names == ["GET /files/{str}/raw"]
    assert profile.match("GET", "/files/anything-else/raw").rule is not None
    assert profile.match("GET", "/files/a/b/raw").rule is None


def test_literals_win_over_variables_and_methods_are_distinct() -> None:
    profile = ServiceProfile("ns/api")
    profile.endpoint_for_learning("GET", "/users/me")
    profile.endpoint_for_learning("GET", "/users/42")
    profile.endpoint_for_learning("POST", "/users/42")
    assert profile.match("GET", "/users/me").rule.template == "/users/me"
    assert profile.match("GET", "/users/7").rule.template == "/users/{int}"
    m = profile.match("DELETE", "/users/7")
    assert m.rule is None and m.path_known
    assert profile.match("GET", "/users/7/x").path_known is False


def test_hostile_deep_paths_are_bounded() -> None:
    profile = ServiceProfile("ns/api", Limits(max_depth=8))
    deep = "/a" * 5000
    rule = profile.endpoint_for_learning("GET", deep)
    assert rule is not None and rule.template.endswith("{any}")
    assert profile.match("GET", deep).rule is rule
    assert profile.match("GET", "/b" * 5000).rule is None


def test_endpoint_and_source_bounds() -> None:
    profile = ServiceProfile("ns/api", Limits(max_endpoints=10, max_sources=3, cardinality_k=1000))
    for i in range(100):
        profile.endpoint_for_learning("GET", f"/p{chr(97 + i % 26)}{i}x")
        profile.learn_source(f"ns/s{i}", 0.0)
    assert profile.endpoints == 10 and len(profile.sources) == 3 and profile.dropped == 187


def test_human_widening_rules() -> None:
    a = Allowlist()
    a.import_doc(
        {
            "services": [
                {
                    "destination": "ns/api",
                    "sources": ["ns/a"],
                    "endpoints": [
                        {"method": "GET", "path": "/static/{any}", "query": {"*": ["any"]}},
                        {"method": "POST", "path": "/items", "body": {"$.name": ["text"]}},
                    ],
                }
            ]
        }
    )
    engine = Engine(config=EngineConfig(threats=False))
    engine.allowlist = a
    v = engine.evaluate(obs("GET", "/static/css/site.css", query="v=3&x=y"), mode="enforce")
    assert v.verdict == "allow", v
    v = engine.evaluate(obs("POST", "/items", body=b'{"name": "pen"}'), mode="enforce")
    assert v.verdict == "allow", v
    v = engine.evaluate(obs("POST", "/items", body=b'{"name": "pen", "admin": 1}'), mode="enforce")
    assert v.verdict == "deny" and "new-body-field" in v.reasons


def test_import_rejects_bad_documents_whole() -> None:
    a = Allowlist()
    a.profile("ns/keep").endpoint_for_learning("GET", "/x")
    bad = {"services": [{"destination": "ns/a", "endpoints": [{"method": "GET", "path": "nope"}]}]}
    try:
        a.import_doc(bad, replace=True)
    except ValueError as exc:
        assert "endpoint 0" in str(exc)
    else:
        raise AssertionError("bad document accepted")
    assert a.get("ns/keep") is not None


def test_value_classes_cover_like_expected() -> None:
    assert values.classify("42") == "int"
    assert values.classify("5f3a9c0d1e2b4a6c8d9e0f1a") == "hex"
    assert values.classify("2026-11-24") == "date"
    assert values.classify("a@b.io") == "email"
    assert values.classify("shoes") == "word"
    assert values.classify("' or 1=1 --") == "text"
    assert values.covered("int", {"text"})
    assert not values.covered("text", {"int"})
    assert values.classify_leaf(3) == values.classify_leaf("3") == "int"  # one name for both
    assert values.classify_leaf(True) == "bool" and values.classify_leaf(1.5) == "float"


def test_threat_bearing_requests_are_not_learned() -> None:
    class OneThreat:
        def inspect(self, o: Observation, body: object = None) -> Inspection:
            bad = "evil" in o.path
            return Inspection([Threat("SQL.Injection", "path", "evil")] if bad else [])

    engine = Engine(config=EngineConfig(), detector=OneThreat())
    v = engine.evaluate(obs("GET", "/evil"), mode="learn")
    assert v.verdict == "alert" and v.threats
    assert engine.allowlist.get("ns/api") is None
    assert engine.evaluate(obs("GET", "/ok"), mode="learn").verdict == "allow"
    assert engine.evaluate(obs("GET", "/ok"), mode="enforce").verdict == "allow"
    assert engine.evaluate(obs("GET", "/evil"), mode="enforce").verdict == "deny"
    assert engine.evaluate(obs("GET", "/evil"), mode="monitor").verdict == "alert"


def test_a_failing_detector_never_lets_a_request_through_quietly() -> None:
    """A detector bug on some input (an exception) makes the request unseen, not clean: not
    learned, alerted in learn and monitor, denied in enforce, counted."""

    class Brittle:
        def inspect(self, o: Observation, body: object = None) -> Inspection:
            if "boom" in o.path:
                raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
            return Inspection()

    engine = Engine(config=EngineConfig(), detector=Brittle())
    v = engine.evaluate(obs("GET", "/boom"), mode="learn")
    assert v.verdict == "alert" and "inspection-failed" in v.reasons and v.body_partly_inspected
    assert engine.allowlist.get("ns/api") is None
    engine.evaluate(obs("GET", "/boom/ok"), mode="learn")  # learned had it been clean: it is not
    assert engine.allowlist.get("ns/api") is None
    engine.evaluate(obs("GET", "/ok"), mode="learn")
    assert engine.evaluate(obs("GET", "/ok"), mode="enforce").verdict == "allow"
    assert engine.evaluate(obs("GET", "/boom"), mode="monitor").verdict == "alert"
    assert engine.evaluate(obs("GET", "/boom"), mode="enforce").verdict == "deny"
    assert engine.counters["inspection_failed"] == 4


def test_every_array_element_is_checked_not_only_the_first() -> None:
    """A value of another class hidden in a later array element is a body-type-mismatch; an
    array whose elements normally mix classes learns all of them."""
    import json

    engine = Engine(config=EngineConfig(threats=False))
    for i in range(30):
        items = [{"sku": f"sku-{i}", "qty": 1 + k} for k in range(4)]
        mixed = [7, "seven"]  # this field normally holds both an integer and a word
        body = json.dumps({"items": items, "tags": mixed}).encode()
        engine.evaluate(obs("POST", "/orders", body=body), mode="learn")
    ok = json.dumps({"items": [{"sku": "a", "qty": 1}] * 3, "tags": ["x", 3]}).encode()
    assert engine.evaluate(obs("POST", "/orders", body=ok), mode="enforce").verdict == "allow"
    hidden = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}, {"sku": "c", "qty": {"$gt": 0}}]
    bad = json.dumps({"items": hidden, "tags": [1]}).encode()
    v = engine.evaluate(obs("POST", "/orders", body=bad), mode="enforce")
    assert "new-body-field" in v.reasons  # items[].qty.$gt
    hidden[2]["qty"] = 1.5  # type: ignore[assignment]
    bad = json.dumps({"items": hidden, "tags": [1]}).encode()
    v = engine.evaluate(obs("POST", "/orders", body=bad), mode="enforce")
    assert v.verdict == "deny" and "body-type-mismatch" in v.reasons, v


def test_learning_caps_destinations_and_sources_counted_and_bounded_in_memory() -> None:
    """One caller inventing destinations or sources cannot grow memory without bound: past
    the caps learning is refused and counted, and 5,000 new destinations cost what 50 do."""
    import tracemalloc

    from meshward.core.engine import Engine, EngineConfig
    from meshward.core.observation import Identity, Observation
    from meshward.core.threats.inspection import NoDetector

    engine = Engine(EngineConfig(limits=Limits(max_destinations=50, max_sources=10)), NoDetector())

    def flood(start: int, n: int) -> None:
        for i in range(start, start + n):
            engine.evaluate(
                Observation("file", Identity("x", f"s{i}"), Identity(f"n{i}", "api"), method="GET")
            )

    flood(0, 50)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    flood(50, 5_000)
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert len(engine.allowlist.services) == 50
    assert engine.refused["destination-cap"] == 5_000
    assert grown < 256 * 1024, grown  # the refusals themselves keep nothing
    for i in range(20):  # one destination, many callers
        engine.evaluate(Observation("file", Identity("x", f"c{i}"), Identity("n0", "api")))
    assert len(engine.allowlist.services["n0/api"].sources) == 10
    assert engine.refused["source-cap"] == 11  # n0/api had learned s0 before


def test_a_credential_in_a_path_is_learned_as_a_variable_not_a_literal() -> None:
    p = ServiceProfile("shop/api")
    for path in ("/api/items", "/healthz", "/reset/Summer2024pw"):
        assert p.endpoint_for_learning("GET", path) is not None
    doc = json.dumps(p.to_doc())
    assert "Summer2024pw" not in doc and "/reset/{str}" in doc
    assert "/api/items" in doc and "/healthz" in doc  # the other literals are not folded


def test_templates_name_an_unknown_variable_and_the_known_ones() -> None:
    """`/x/{nope}` was a literal matching nothing: every document read refuses it, saying why."""
    assert templates.parse("/users/{int}/files/{any}") == ["users", "{int}", "files", "{any}"]
    for bad, says in [
        ("/x/{nope}", "unknown template variable '{nope}'"),
        ("/x/a{int}", "unknown template variable 'a{int}'"),
        ("/x/{int", "unknown template variable '{int'"),
        ("/x/{any}/y", "{any} (the rest of the path) must be last"),
        ("x/{int}", "must start with '/'"),
    ]:
        try:
            templates.parse(bad)
        except ValueError as exc:
            assert says in str(exc), exc
            if "unknown" in says:
                assert "{int}, {uuid}, {hex}, {date}, {email}, {jwt}, {token}, {str}, {any}" in (
                    str(exc)
                )
        else:
            raise AssertionError(f"{bad} accepted")
    doc = {"services": [{"destination": "ns/a", "endpoints": [{"method": "GET", "path": "/{x}"}]}]}
    try:
        Allowlist().import_doc(doc)
    except ValueError as exc:
        assert str(exc).startswith("service 0: endpoint 0: path '/{x}': unknown template variable")
    else:
        raise AssertionError("import accepted /{x}")


def test_a_brace_in_a_path_is_never_learned() -> None:
    """A literal `{any}` learned from a request read back from the stored document as the
    variable, allowing all of /admin after a restart: such a request is judged, not learned,
    and the refusal counted."""
    engine = Engine(EngineConfig(threats=False))
    for _ in range(3):
        engine.evaluate(obs("GET", "/admin/{any}"), mode="learn")
        engine.evaluate(obs("GET", "/ok"), mode="learn")
    assert [r.template for r in engine.allowlist.services["ns/api"].rules()] == ["/ok"]
    assert engine.refused["brace-in-path"] == 3
    reloaded = Engine(EngineConfig(threats=False))
    reloaded.load({"ns/api": engine.allowlist.services["ns/api"].to_doc()}, {})
    assert reloaded.evaluate(obs("GET", "/admin/secret"), mode="enforce").verdict == "deny"


def test_one_spelling_of_value_classes_and_json_types_still_checked() -> None:
    """`int` for `?page=2`, `"2"` and `2` alike (`integer`, `number`, `boolean` are read as
    `int`, `float`, `bool`); a number or a boolean where strings were learned is still a
    body-type-mismatch (`{"password": true}` against a PHP `==`), and widening never folds a
    number into `text`."""
    import json

    engine = Engine(EngineConfig(threats=False))
    for i in range(30):
        body = {"user": f"user{i}", "password": f"Pw-{i}x{i * 7}", "qty": 1 + i % 3}
        body["price"] = 1.5 + i
        engine.evaluate(
            obs("POST", "/login", body=json.dumps(body).encode(), query=f"page={i}"),
            mode="learn",
        )
    rule = engine.allowlist.services["ns/api"].rules()[0].to_doc()
    assert rule["query"] == {"page": ["int"]}
    assert rule["body"]["$.qty"] == ["int"] and rule["body"]["$.price"] == ["float"]
    names = {c for v in [*rule["query"].values(), *rule["body"].values()] for c in v}
    assert not names & {"integer", "number", "boolean"}

    def verdict(**changed: object) -> list[str]:
        body = {"user": "user3", "password": "Pw-3x21", "qty": 2, "price": 3.5, **changed}
        v = engine.evaluate(obs("POST", "/login", body=json.dumps(body).encode()), "enforce")
        return v.reasons

    assert verdict() == []
    assert "body-type-mismatch" in verdict(password=True)  # a boolean where text was learned
    assert "body-type-mismatch" in verdict(user=0)  # a number where words were learned
    assert "body-type-mismatch" in verdict(qty="two")
    assert verdict(price=4) == []  # a float field takes an integer, as JSON numbers do
    assert verdict(qty="2") == []  # a string holding an int is an int: one name, one class
    widened = values.widen({"int", "word", "uuid", "hex", "date", "email", "jwt", "token"})
    assert widened == {"int", "text"}
    doc = {
        "services": [
            {
                "destination": "ns/old",
                "endpoints": [
                    {"method": "POST", "path": "/x", "body": {"$.n": ["integer", "boolean"]}},
                    {"method": "GET", "path": "/y", "query": {"f": "number"}},
                ],
            }
        ]
    }
    assert allowlist_mod.old_class_names(doc) == {"integer", "boolean", "number"}
    a = Allowlist()
    a.import_doc(doc)
    got = {r.template: r.to_doc() for r in a.services["ns/old"].rules()}
    assert got["/x"]["body"] == {"$.n": ["bool", "int"]} and got["/y"]["query"] == {"f": ["float"]}
    bad = {
        "services": [
            {
                "destination": "a/b",
                "endpoints": [{"method": "GET", "path": "/", "query": {"q": ["integr"]}}],
            }
        ]
    }
    try:
        Allowlist().import_doc(bad)
    except ValueError as exc:
        assert "unknown value class 'integr' (known: any, array, bool, date," in str(exc)
    else:
        raise AssertionError("integr accepted")
