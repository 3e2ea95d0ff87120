"""Identity spellings, and the memoised pieces of the hot path staying correct and bounded."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core import values
from meshward.core.bodies import decode_body
from meshward.core.observation import Identity, Observation


@pytest.mark.parametrize(
    ("text", "namespace", "workload", "principal"),
    [
        (
            "spiffe://cluster.local/ns/shop/sa/web",
            "shop",
            "web",
            "spiffe://cluster.local/ns/shop/sa/web",
        ),
        (
            "web.shop.serviceaccount.identity.linkerd.cluster.local",
            "shop",
            "web",
            "web.shop.serviceaccount.identity.linkerd.cluster.local",
        ),
        ("Orders.Shop.svc.cluster.local:8080", "shop", "orders", ""),
        ("shop/web", "shop", "web", ""),
        ("  web  ", "", "web", ""),
        ("unknown", "", "", ""),
        ("", "", "", ""),
        ("spiffe://td/other/path", "", "spiffe://td/other/path", ""),
    ],
)
def test_identity_spellings(text: str, namespace: str, workload: str, principal: str) -> None:
    for _ in range(2):  # the second parse comes from the memo and must be the same
        ident = Identity.parse(text, ip="10.0.0.1", port=80)
        assert (ident.namespace, ident.workload) == (namespace, workload)
        assert ident.principal == principal
        assert (ident.ip, ident.port) == ("10.0.0.1", 80)


def test_parsed_identities_are_independent() -> None:
    """Callers change the Identity they get (ext_authz sets the namespace): the memo must not
    hand the same object to the next request."""
    a = Identity.parse("spiffe://td/ns/shop/sa/web")
    a.namespace = "changed"
    assert Identity.parse("spiffe://td/ns/shop/sa/web").namespace == "shop"


def test_value_class_memo_is_bounded_and_exact() -> None:
    values._CACHE.clear()
    for i in range(values._CACHE_MAX * 2):
        assert values.classify(f"user{i:06d}x") == values.WORD
    assert len(values._CACHE) <= values._CACHE_MAX
    assert values.classify("12") == values.INT
    assert values.classify("12") == values.INT  # from the memo
    long = "g1" * 40  # longer than the memo keeps
    assert values.classify(long) == values.TOKEN and long not in values._CACHE


def test_json_shape_and_fields_agree() -> None:
    """The allowlist's shape walk and the detectors' fields walk see the same leaves and limits,
    whichever runs first."""
    doc = {
        "id": 7,
        "user": {"name": "ada", "email": "ada@example.com", "tags": ["a", "b"]},
        "items": [{"sku": "x1", "qty": 1}, {"sku": "x2", "qty": 2, "gift": True}],
        "weird key": None,
        "price": 1.5,
    }
    body = json.dumps(doc).encode()
    first_shape = decode_body("application/json", body)
    shape = first_shape.shape()
    assert shape == {
        "$.id": "int",
        "$.user.name": "word",
        "$.user.email": "email",
        "$.user.tags[]": "word",
        "$.items[].sku": "word",
        "$.items[].qty": "int",
        "$.items[].gift": "bool",
        '$["weird key"]': "null",
        "$.price": "float",
    }
    first_fields = decode_body("application/json", body)
    assert len(first_fields.fields) == 12 and len(first_fields.keys) == 13
    assert first_fields.shape() == shape
    assert first_shape.fields == first_fields.fields and first_shape.keys == first_fields.keys
    for max_fields in (1, 3, 5, 12, 13, 100):
        a = decode_body("application/json", body, max_fields=max_fields)
        b = decode_body("application/json", body, max_fields=max_fields)
        a.shape()
        b.fields  # noqa: B018
        assert a.partial == b.partial == (max_fields < 13)
        assert a.shape() == b.shape()


@pytest.mark.parametrize(
    "body",
    [b'{"a": NaN}', b'{"big": 123456789012345678901234567890}', b'{"s": "\\ud800"}'],
)
def test_json_the_fast_parser_refuses_is_still_read(body: bytes) -> None:
    """orjson refuses these; the json module reads them, so their kind does not change."""
    d = decode_body("application/json", body)
    assert d.kind == "json" and d.fields and not d.partial


def test_child_path_memo_is_bounded_under_high_cardinality_keys() -> None:
    """Bodies keyed by ids (a new key every request) must not grow the path memo without end."""
    from meshward.core import bodies

    for i in range(5000):
        doc = {f"user-{i}": {f"k{j}-{i}": j for j in range(5)}, "x" * 200 + str(i): 1}
        decode_body("application/json", json.dumps(doc).encode()).shape()
    memo = bodies._CHILD_PATHS
    assert len(memo) <= bodies._MEMO_PARENTS + 1
    assert all(len(kids) <= bodies._MEMO_KEYS for kids in memo.values())
    assert all(len(k) <= bodies._MEMO_KEY_LEN for kids in memo.values() for k in kids)


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=6), kids, max_size=5)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(doc=json_docs, max_fields=st.integers(1, 30), max_depth=st.integers(1, 8))
def test_shape_walk_agrees_with_fields_walk(doc: object, max_fields: int, max_depth: int) -> None:
    """Whatever the document and limits: the same `partial`, and the shape's (path, class) pairs
    are exactly those of the leaves the fields walk collects."""
    body = json.dumps(doc).encode()
    a = decode_body("application/json", body, max_fields=max_fields, max_depth=max_depth)
    b = decode_body("application/json", body, max_fields=max_fields, max_depth=max_depth)
    a.shape()
    b.fields  # noqa: B018
    assert a.partial == b.partial
    pairs = {(path, values.classify_leaf(leaf)) for path, leaf in b.fields}
    assert set(a.leaf_classes()) == pairs == set(b.leaf_classes())
    assert len(b.fields) <= max_fields and len(b.keys) <= max_fields


@settings(max_examples=200, deadline=None)
@given(
    ct=st.sampled_from(
        [
            "",
            "application/json",
            "application/x-www-form-urlencoded",
            "application/xml",
            "text/plain",
        ]
    ),
    body=st.binary(max_size=200),
)
def test_shape_never_raises(ct: str, body: bytes) -> None:
    d = decode_body(ct, body, max_fields=20)
    assert isinstance(d.partial, bool) and isinstance(d.shape(), dict)
    assert all(isinstance(p, str) and c in values.ALL_CLASSES for p, c in d.leaf_classes())


def test_typed_fields_round_trip_and_legacy_extra_keys() -> None:
    from meshward.core.observation import observation_from_dict, observation_to_dict

    obs = Observation(
        seen_by="envoy-tap",
        direction="outbound",
        headers_truncated=True,
        outcome="expired",
        extra={"node": "n1"},
    )
    back = observation_from_dict(observation_to_dict(obs))
    assert (back.direction, back.headers_truncated, back.outcome, back.extra) == (
        "outbound",
        True,
        "expired",
        {"node": "n1"},
    )
    assert not back.complete and Observation(seen_by="file").complete
    # the spelling before these were fields: keys of extra, still read, taken out of extra
    old = observation_to_dict(Observation(seen_by="node-tap"))
    for key in ("direction", "headers_truncated", "outcome"):
        del old[key]
    old["extra"] = {
        "direction": "inbound",
        "headers_truncated": "true",
        "tap_outcome": "cut",
        "netns": "x",
    }
    back = observation_from_dict(old)
    assert (back.direction, back.headers_truncated, back.outcome, back.extra) == (
        "inbound",
        True,
        "cut",
        {"netns": "x"},
    )
    for bad in ({"direction": "sideways"}, {"outcome": "maybe"}):
        with pytest.raises(ValueError):
            observation_from_dict({**observation_to_dict(obs), **bad})
