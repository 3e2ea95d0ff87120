"""The shape of `{str}` path values: learned at generalisation and after, kept in documents,
merged as a join, and checked when scoring (reason `path-value-class`)."""

from __future__ import annotations

import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core import reasons
from meshward.core.allowlist import Allowlist, EndpointRule, ServiceProfile
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Identity, Observation
from meshward.core.pathvalues import PathShape, form

RND = random.Random(5)


def user_id() -> str:
    return "u-" + "".join(RND.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def order_ref() -> str:
    return "ord-" + "".join(RND.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def test_form_and_classes() -> None:
    assert form("u-83hd72") == "x-x"
    assert form("red-q1.pdf") == "x-x.x"
    assert form("admin") == "x"
    assert form("blue-summer-dress-xl") == form("red-hat") == "x-x"
    shape = PathShape()
    for v in ("u-83hd72", "u-0a9x1c", "u-zz01kq"):
        shape.learn(v)
    assert shape.accepts("u-7r2m0p")
    assert not shape.accepts("admin")  # another form
    assert not shape.accepts("U-83HD72")  # upper case never seen
    assert not shape.accepts("u-83hd72-and-more-and-more")  # far longer
    assert not shape.accepts("u-'or1")  # a quote never seen


def learned(paths: list[str], method: str = "GET") -> ServiceProfile:
    profile = ServiceProfile("shop/api")
    for p in paths:
        rule = profile.endpoint_for_learning(method, p)
        assert rule is not None
    return profile


@pytest.mark.parametrize(
    ("prefix", "make", "word"),
    [("/users/", user_id, "admin"), ("/orders/", order_ref, "export")],
)
def test_a_word_among_generalised_ids_deviates(prefix: str, make: object, word: str) -> None:
    ids = [make() for _ in range(200)]  # type: ignore[operator]
    profile = learned([prefix + i for i in ids[:100]])
    rule = profile.match("GET", prefix + "whatever").rule
    assert rule is not None and rule.template == prefix + "{str}"
    assert all(not rule.path_value_deviates(prefix + i) for i in ids[100:])  # unseen ids
    assert rule.path_value_deviates(prefix + word)


def test_the_literals_folded_at_generalisation_are_learned() -> None:
    """The K literals seen before the position became `{str}` are part of its shape."""
    profile = learned([f"/files/report-{i}.pdf" for i in range(17)])
    (rule,) = profile.rules()
    assert rule.template == "/files/{str}"
    assert rule.path_values[1].low == len("report-0.pdf")
    assert not rule.path_value_deviates("/files/report-3.pdf")


def test_deeper_positions_and_sub_resources() -> None:
    paths = [f"/users/{user_id()}/orders" for _ in range(40)]
    profile = learned(paths)
    rule = profile.match("GET", "/users/u-abc123/orders").rule
    assert rule is not None and rule.template == "/users/{str}/orders"
    assert rule.path_value_deviates("/users/me/orders")


def test_shapes_survive_export_and_import() -> None:
    profile = learned([f"/users/{user_id()}" for _ in range(40)])
    allow = Allowlist()
    allow.services["shop/api"] = profile
    back = Allowlist()
    back.import_doc(allow.export_doc())
    rule = back.services["shop/api"].match("GET", "/users/x").rule
    assert rule is not None
    assert rule.path_value_deviates("/users/admin")
    assert not rule.path_value_deviates("/users/u-q1w2e3")


def test_a_str_written_by_a_person_accepts_anything() -> None:
    rule = EndpointRule.from_doc({"method": "GET", "path": "/wiki/{str}"})
    assert rule.path_values[1].open
    assert not rule.path_value_deviates("/wiki/Anything at all")
    # and learning through it does not narrow it
    profile = ServiceProfile("shop/api")
    profile.add_rule(rule)
    profile.endpoint_for_learning("GET", "/wiki/u-123abc")
    assert profile.rules()[0].path_values[1].open


@pytest.mark.parametrize(
    "bad",
    [
        {"0": "*"},
        {"1": {"length": [1]}},
        {"1": 5},
        {"x": "*"},
        {"1": {"chars": 1, "length": [1, 2]}},
    ],
)
def test_bad_path_values_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        EndpointRule.from_doc({"method": "GET", "path": "/wiki/{str}", "path_values": bad})


def test_scoring_raises_path_value_class() -> None:
    engine = Engine(config=EngineConfig(threats=False))
    src = Identity.parse("shop/web")
    dst = Identity.parse("shop/api")

    def obs(path: str) -> Observation:
        return Observation("file", source=src, destination=dst, method="GET", path=path)

    for _ in range(100):
        engine.evaluate(obs("/users/" + user_id()), mode="learn")
    normal = engine.evaluate(obs("/users/" + user_id()), mode="monitor")
    assert normal.verdict == "allow", normal.reasons
    odd = engine.evaluate(obs("/users/admin"), mode="monitor")
    assert reasons.PATH_VALUE_CLASS in odd.reasons and odd.verdict == "alert"


VALUES = st.text(alphabet="ab9Z-._'é", min_size=1, max_size=12)


def shape_of(values: list[str]) -> PathShape:
    shape = PathShape()
    for v in values:
        shape.learn(v)
    return shape


@settings(max_examples=100, deadline=None)
@given(st.lists(VALUES, max_size=5), st.lists(VALUES, max_size=5), st.lists(VALUES, max_size=5))
def test_join_is_a_semilattice_join(a: list[str], b: list[str], c: list[str]) -> None:
    x, y, z = shape_of(a), shape_of(b), shape_of(c)
    assert x.join(y).to_doc() == y.join(x).to_doc()
    assert x.join(y).join(z).to_doc() == x.join(y.join(z)).to_doc()
    assert x.join(x).to_doc() == x.to_doc()
    # learning both lists is the join of learning each: a value either side accepts is accepted
    both = shape_of(a + b)
    if x.low >= 0 and y.low >= 0:
        assert both.to_doc() == x.join(y).to_doc()
    for v in a + b:
        assert x.join(y).accepts(v)


def test_slugs_of_any_word_count_are_one_form() -> None:
    words = ["blue", "summer", "dress", "xl", "linen", "shirt", "kids", "wool", "hat", "navy"]
    slugs = ["-".join(RND.sample(words, RND.randint(1, 3))) for _ in range(60)]
    profile = learned(["/products/" + s for s in slugs])
    rule = profile.rules()[0]
    assert rule.template == "/products/{str}"
    assert not rule.path_value_deviates("/products/navy-linen-shirt-kids")
    assert rule.path_value_deviates("/products/..%2f..%2fetc")
    assert rule.path_value_deviates("/products/Robots.TXT")
