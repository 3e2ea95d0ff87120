"""meshward.core.bodies: query and body decoding, including hostile and oversized input."""

from __future__ import annotations

import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core import bodies
from meshward.core.bodies import KINDS, DecodedBody, body_kind, decode_body, parse_query


def test_parse_query_semantics() -> None:
    pairs, cut = parse_query("a=1&b=&c&d=x+y&e=%2Fetc%2Fpasswd&&f=%E2%82%AC")
    assert pairs == [
        ("a", "1"),
        ("b", ""),
        ("c", ""),
        ("d", "x y"),
        ("e", "/etc/passwd"),
        ("f", "€"),
    ]
    assert not cut


def test_parse_query_limit_and_million_params() -> None:
    pairs, cut = parse_query("a=1&b=2&c=3", max_params=2)
    assert pairs == [("a", "1"), ("b", "2")] and cut
    huge = "&".join(["x=1"] * 1_000_000)
    t0 = time.perf_counter()
    pairs, cut = parse_query(huge)
    assert time.perf_counter() - t0 < 1.0
    assert len(pairs) == 1024 and cut


def test_parse_query_invalid_percent_and_utf8() -> None:
    pairs, _ = parse_query("a=%ZZ%ff%&b=%c3")
    assert pairs[0][0] == "a" and "%ZZ" in pairs[0][1]
    assert pairs[1] == ("b", "\ufffd")


def test_json_paths_keys_and_arrays() -> None:
    body = json.dumps(
        {
            "user": {"name": "bob", "age": 3},
            "items": [{"id": 1}, {"id": 2.5}],
            "ok": True,
            "none": None,
            "odd key": "v",
        }
    ).encode()
    d = decode_body("application/json; charset=utf-8", body)
    assert d.kind == "json" and not d.partial
    assert ("$.user.name", "bob") in d.fields and ("$.user.age", 3) in d.fields
    assert ("$.items[].id", 1) in d.fields and ("$.items[].id", 2.5) in d.fields
    assert ("$.ok", True) in d.fields and ("$.none", None) in d.fields
    assert ('$["odd key"]', "v") in d.fields
    assert ("$.user", "name") in d.keys and ("$", "items") in d.keys


def test_json_nosql_operator_keys_are_visible() -> None:
    d = decode_body("application/vnd.api+json", b'{"user": {"$ne": null}, "q": [[1, 2]]}')
    assert ("$.user", "$ne") in d.keys
    assert ('$.user["$ne"]', None) in d.fields
    assert ("$.q[][]", 1) in d.fields


def test_json_sniffed_without_content_type() -> None:
    assert decode_body("", b' {"a": 1}').kind == "json"
    assert decode_body("", b"[1]").kind == "json"
    assert decode_body("", b'"just a string"').kind == "text"
    assert decode_body("", b"{not json").kind == "text"
    assert decode_body("", b"\x00\x01\x02\xff\xfe").kind == "binary"


def test_json_scalar_and_invalid() -> None:
    assert decode_body("application/json", b'"x"').fields == [("$", "x")]
    bad = decode_body("application/json", b'{"a": ')
    assert bad.kind == "invalid" and bad.fields == []
    assert decode_body("application/json", b'{"a": "\xff\xfe"}').kind == "invalid"
    assert decode_body("application/json", b"1" * 10_000).kind == "invalid"  # int digits limit


def test_json_deep_nesting_is_bounded() -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    t0 = time.perf_counter()
    d = decode_body("application/json", deep)
    assert time.perf_counter() - t0 < 1.0
    assert d.kind == "json" and d.partial
    mid = json.dumps(json.loads("[" * 500 + '"x"' + "]" * 500)).encode()
    d = decode_body("application/json", mid, max_depth=64)
    assert d.partial and d.fields == []
    obj = b'{"a":' * 100 + b"1" + b"}" * 100
    d = decode_body("application/json", obj, max_depth=10)
    assert d.partial and len(d.keys) == 10


def test_json_field_limit() -> None:
    body = json.dumps({"a": list(range(100_000))}).encode()
    d = decode_body("application/json", body, max_fields=100)
    assert d.partial and len(d.fields) == 100
    body = json.dumps({f"k{i}": i for i in range(10_000)}).encode()
    d = decode_body("application/json", body, max_fields=100)
    assert d.partial and len(d.keys) == 100


def test_big_body_is_cut() -> None:
    big = b'{"a": "' + b"x" * (10 << 20) + b'"}'
    t0 = time.perf_counter()
    d = decode_body("application/json", big)
    assert time.perf_counter() - t0 < 0.5
    assert d.kind == "json" and d.partial and d.fields == []
    d = decode_body("text/plain", b"y" * (10 << 20), max_bytes=1000)
    assert d.kind == "text" and d.partial and len(d.fields[0][1]) == 1000  # type: ignore[arg-type]


def test_form() -> None:
    d = decode_body("application/x-www-form-urlencoded", b"user=bob&pw=a+b%27&x=")
    assert d.kind == "form"
    assert d.fields == [("$.user", "bob"), ("$.pw", "a b'"), ("$.x", "")]
    d = decode_body("application/x-www-form-urlencoded", b"&".join([b"a=1"] * 10), max_fields=3)
    assert d.partial and len(d.fields) == 3


def test_multipart() -> None:
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="title"\r\n\r\n'
        b"hello\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="../../etc/passwd"\r\n'
        b"Content-Type: text/plain\r\n\r\n"
        b"line1\r\nline2\r\n"
        b"--XyZ--\r\n"
    )
    d = decode_body('multipart/form-data; boundary="XyZ"', body)
    assert d.kind == "multipart" and not d.partial
    assert d.fields == [
        ("$.title", "hello"),
        ("$.file.filename", "../../etc/passwd"),
        ("$.file", "line1\r\nline2"),
    ]
    assert decode_body("multipart/form-data", body).kind == "invalid"  # no boundary
    assert decode_body("multipart/form-data; boundary=nope", body).kind == "invalid"


def test_xml_text_and_attributes() -> None:
    body = (
        b'<?xml version="1.0"?><order id="7"><item sku="a&amp;b">pen</item>'
        b"<note> hi </note></order>"
    )
    d = decode_body("application/xml", body)
    assert d.kind == "xml" and not d.partial
    assert d.fields == [
        ("$.order@id", "7"),
        ("$.order.item@sku", "a&b"),
        ("$.order.item", "pen"),
        ("$.order.note", "hi"),
    ]
    assert decode_body("text/xml", b"<a><b></a>").kind == "invalid"


def test_xml_entity_bomb_is_not_expanded() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i > 1 else b"&lol;" * 10)
            for i in range(1, 10)
        )
        + b"]><lolz>&lol9;</lolz>"
    )
    t0 = time.perf_counter()
    d = decode_body("application/xml", bomb)
    assert time.perf_counter() - t0 < 0.5
    assert d.kind == "xml" and d.partial and d.fields == []


def test_xml_deep_nesting() -> None:
    deep = b"<a>" * 10_000 + b"</a>" * 10_000
    d = decode_body("application/xml", deep)
    assert d.kind == "xml" and d.partial


def test_kinds_by_content_type() -> None:
    assert decode_body("application/json", b"").kind == "empty"
    assert decode_body("application/grpc", b"\x00\x00\x00\x00\x02\x08\x01").kind == "binary"
    assert decode_body("text/html", b"<b>x</b>").fields == [("$", "<b>x</b>")]
    assert decode_body("image/png", b"\x89PNG").kind == "binary"


@settings(max_examples=300, deadline=None)
@given(
    ct=st.sampled_from(
        [
            "",
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=b",
            "application/xml",
            "text/plain",
            "application/octet-stream",
            "garbage;;;boundary=",
        ]
    ),
    body=st.binary(max_size=300),
)
def test_never_raises_on_arbitrary_bytes(ct: str, body: bytes) -> None:
    d = decode_body(ct, body, max_fields=50)
    assert isinstance(d, DecodedBody) and d.kind in KINDS
    assert len(d.fields) <= 100 and len(d.keys) <= 50


@settings(max_examples=200, deadline=None)
@given(
    doc=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_json_leaf_count_matches(doc: object) -> None:
    d = decode_body("application/json", json.dumps(doc).encode())
    assert d.kind == "json" and not d.partial

    def leaves(x: object) -> int:
        if isinstance(x, dict):
            return sum(leaves(v) for v in x.values())
        if isinstance(x, list):
            return sum(leaves(v) for v in x)
        return 1

    assert len(d.fields) == leaves(doc)


@given(st.text(max_size=200))
def test_parse_query_never_raises(q: str) -> None:
    pairs, _ = parse_query(q)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)


def test_body_kind_remembers_few_content_types_and_answers_the_same() -> None:
    """body_kind keeps the kinds of the content types that repeat (bounded), and answers from
    memory what it answered the first time."""
    cases = {
        "application/json": "json",
        "Application/JSON; charset=utf-8": "json",
        "application/problem+json": "json",
        "application/x-www-form-urlencoded": "form",
        "multipart/form-data; boundary=x": "multipart",
        "text/xml": "xml",
        "text/plain": "text",
        "application/octet-stream": "binary",
        " ; charset=utf-8": "",
    }
    for _ in range(2):
        assert {ct: body_kind(ct) for ct in cases} == cases
    for n in range(600):
        assert body_kind(f"application/x-{n}") == "binary"
    assert len(bodies._KINDS) <= 256
