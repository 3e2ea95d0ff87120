"""The allowlist as OpenAPI 3.1 documents: valid by openapi-spec-validator, and describing the
learned traffic (held-out requests fit, deviations do not)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

import jsonschema
import pytest
from openapi_spec_validator import validate

from meshward.core.allowlist import Allowlist, EndpointRule
from meshward.core.observation import Observation
from meshward.formats.openapi import body_path, openapi_documents
from tests.support.learned import DESTINATION, sample_engine
from tests.support.openapi_traffic import Traffic


def _doc() -> dict[str, Any]:
    (doc,) = openapi_documents(sample_engine().allowlist).objects
    return doc


def _operation(doc: dict[str, Any], obs: Observation) -> tuple[dict[str, Any], dict[str, str]]:
    """The operation a request lands on (and its path parameters' values), else KeyError."""
    for key, item in doc["paths"].items():
        names = re.findall(r"\{(\w+)\}", key)
        regex = re.sub(r"\\\{\w+\\\}", "([^/]+)", re.escape(key))
        m = re.fullmatch(regex, obs.path)
        if m and obs.method.lower() in item:
            return item[obs.method.lower()], dict(zip(names, m.groups(), strict=True))
    raise KeyError(f"{obs.method} {obs.path}")


def _typed(value: str, schema: dict[str, Any]) -> Any:
    """A query or path value as OpenAPI deserialises it for its schema."""
    kinds = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
    for kind, parse in (("integer", int), ("number", float)):
        if kind in kinds:
            try:
                return parse(value)
            except ValueError:
                pass
    return value


def fits(doc: dict[str, Any], obs: Observation) -> bool:
    """Does a request fit the document: operation, parameters (names and values), body?"""
    try:
        op, path_values = _operation(doc, obs)
    except KeyError:
        return False
    params = {(p["in"], p["name"]): p for p in op.get("parameters", [])}
    values = [("path", k, v) for k, v in path_values.items()]
    values += [("query", k, v) for k, v in parse_qsl(obs.query, keep_blank_values=True)]
    for where, name, value in values:
        p = params.get((where, name))
        if p is None:
            return False
        if not jsonschema.Draft202012Validator(p["schema"]).is_valid(_typed(value, p["schema"])):
            return False
    if obs.body:
        content = op.get("requestBody", {}).get("content", {})
        media = content.get(obs.header("content-type"))
        if media is None:
            return False
        return jsonschema.Draft202012Validator(media["schema"]).is_valid(json.loads(obs.body))
    return True


def test_learned_traffic_gives_a_valid_document_it_fits() -> None:
    doc = _doc()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema and its rules
    assert doc["openapi"] == "3.1.0" and doc["x-meshward-destination"] == DESTINATION
    assert sorted(doc["paths"]) == [
        "/files/{param2}",
        "/health",
        "/orders",
        "/orders/{param2}",
        "/products",
        "/products/{param2}",
        "/products/{param2}/reviews",
        "/users/{param2}",
    ]
    op = doc["paths"]["/products/{param2}"]["get"]
    (param,) = [p for p in op["parameters"] if p["in"] == "path"]
    assert param["schema"] == {"type": "integer"} and param["required"] is True
    user = doc["paths"]["/users/{param2}"]["get"]["parameters"][0]
    assert user["schema"] == {"type": "string", "format": "uuid"}
    review = doc["paths"]["/products/{param2}/reviews"]["post"]
    body = review["requestBody"]["content"]["application/json"]["schema"]
    # meshward's `int` is the JSON number and the string holding one alike (core/values.py)
    rating = body["properties"]["rating"]["anyOf"]
    assert rating[0] == {"type": "integer"} and rating[1]["type"] == "string"
    assert body["properties"]["author"]["properties"]["email"] == {
        "type": "string",
        "format": "email",
    }
    assert body["additionalProperties"] is False
    assert review["x-meshward-callers"] == ["shop/web"]
    held_out = Traffic(seed=99)
    misfits = [o for o in (held_out.normal() for _ in range(1000)) if not fits(doc, o)]
    assert not misfits, [(o.method, o.path, o.query, o.body[:80]) for o in misfits[:5]]


@pytest.mark.parametrize(
    "kind", ["unknown-endpoint", "wrong-method", "new-parameter", "injected-field", "changed-type"]
)
def test_deviations_do_not_fit(kind: str) -> None:
    doc = _doc()
    bad = Traffic(seed=1234)
    fitting = [o for o in (bad.deviation(kind) for _ in range(200)) if fits(doc, o)]
    assert len(fitting) <= 2, [(o.method, o.path, o.query, o.body[:80]) for o in fitting[:5]]


def test_body_paths() -> None:
    assert body_path("$") == []
    assert body_path("$.a.b") == ["a", "b"]
    assert body_path("$.items[].id") == ["items", None, "id"]
    assert body_path('$["a b"]["x\\"y"][]') == ["a b", 'x"y', None]
    assert body_path("$[]") == [None]
    assert body_path("a.b") is None
    assert body_path('$["unclosed') is None


def _allowlist(*rules: EndpointRule) -> Allowlist:
    allowlist = Allowlist()
    profile = allowlist.profile("shop/odd")
    for rule in rules:
        profile.add_rule(rule)
    return allowlist


def test_hostile_and_unusual_rules_still_give_a_valid_document() -> None:
    odd = EndpointRule("POST", "/x{y}/a?b#c/{str}/{any}")
    odd.query = {'q"\n': {"word"}, "n": {"int", "email", "empty", "bool"}}
    odd.open_query = True
    odd.body_kinds = {"json", "empty"}
    odd.content_types = {"application/json", "text/plain"}
    odd.body = {'$["a b"]': {"int", "word"}, "$[]": {"integer"}, "$.n": {"null"}, "bad": {"word"}}
    odd.statuses = {"2xx", "5xx", "junk"}
    opened = EndpointRule("PUT", "/open")
    opened.body_kinds = {"form"}
    opened.open_body = True
    brew = EndpointRule("BREW", "/pot")
    int_rule, str_rule = EndpointRule("GET", "/v/{int}"), EndpointRule("GET", "/v/{str}")
    export = openapi_documents(_allowlist(odd, opened, brew, int_rule, str_rule))
    (doc,) = export.objects
    validate(doc)
    key = "/x%7By%7D/a%3Fb%23c/{param3}/{param4}"
    op = doc["paths"][key]["post"]
    assert {p["name"] for p in op["parameters"]} == {"param3", "param4", 'q"\n', "n", "other"}
    assert op["requestBody"]["required"] is False
    assert set(op["requestBody"]["content"]) == {"application/json", "text/plain"}
    assert set(op["responses"]) == {"2XX", "5XX"}
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert jsonschema.Draft202012Validator(body).is_valid({"a b": "word", "n": None})
    assert not jsonschema.Draft202012Validator(body).is_valid({"a b": "word", "z": 1})
    form = doc["paths"]["/open"]["put"]["requestBody"]["content"]
    assert form == {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}
    whys = sorted(n.why for n in export.notes)
    assert any("left out: not a field path" in w for w in whys)
    assert "left out: no such OpenAPI method" in whys
    assert "left out: OpenAPI has one GET for /v/{param2}" in whys
    assert "{any} reads as one segment in OpenAPI" in whys


def test_every_service_and_one() -> None:
    engine = sample_engine()
    engine.allowlist.profile("other/svc").add_rule(EndpointRule("GET", "/"))
    assert len(openapi_documents(engine.allowlist).objects) == 2
    (one,) = openapi_documents(engine.allowlist, "other/svc").objects
    validate(one)
    assert one["paths"] == {
        "/": {
            "get": {
                "operationId": "get",
                "summary": "GET / (learned)",
                "responses": {"default": {"description": "no response was seen while learning"}},
                "x-meshward-callers": [],
            }
        }
    }
    with pytest.raises(KeyError):
        openapi_documents(engine.allowlist, "nope/nope")
