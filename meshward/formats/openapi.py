"""The learned allowlist as OpenAPI 3.1 documents: one per destination service.

What each learned part becomes (docs/exports.md):
- a rule's template: a path; each variable a path parameter `param<N>` (N: its segment's
  position, so one hierarchy has one name) typed by the classes it accepts (`{int}` an integer,
  `{uuid}` a string of format uuid, ...); `{any}` (the rest of the path) is one parameter that
  OpenAPI reads as one segment, noted;
- its method: the operation, with the callers in `x-meshward-callers`;
- its query parameters: optional query parameters, their schema from the value classes; a rule a
  person opened to any parameter adds a free-form object parameter;
- its body: a request body per learned content type, the JSON or form schema built from the
  learned field paths (`$.a.b`, `$.items[].id`) and their classes, unknown fields refused
  (`additionalProperties: false`) unless the rule is open; required when no empty body was seen;
- its statuses: response ranges (`2XX`).
Literal segments keep their characters; `{`, `}`, `?` and `#` are percent-encoded so they cannot
read as OpenAPI syntax.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from meshward.core import bodies, templates, values
from meshward.core.allowlist import Allowlist, EndpointRule, ServiceProfile
from meshward.core.exports import Export, Note, rule_callers

OPENAPI_VERSION = "3.1.0"
_ENCODE = {"{": "%7B", "}": "%7D", "?": "%3F", "#": "%23"}
_BODY_STEP = re.compile(r'\.([^.\[]+)|\[("(?:[^"\\]|\\.)*")\]|\[\]')
_DEFAULT_TYPES = {
    "json": "application/json",
    "form": "application/x-www-form-urlencoded",
    "multipart": "multipart/form-data",
    "xml": "application/xml",
    "text": "text/plain",
    "binary": "application/octet-stream",
}
_JSON_KINDS = {
    values.JSON_NULL: {"type": "null"},
    values.JSON_OBJECT: {"type": "object"},
    values.JSON_ARRAY: {"type": "array"},
}
# a query, form or path value is text on the wire; these classes read as typed values
_TYPED_TEXT = {
    values.INT: {"type": "integer"},
    values.FLOAT: {"type": "number"},
    values.BOOL: {"type": "boolean"},
}


def string_schema(cls: str) -> dict[str, Any]:
    """The schema of a string of one value class."""
    if cls == values.ANY:
        return {}
    if cls == values.EMPTY:
        return {"type": "string", "maxLength": 0}
    if cls == values.BOOL:
        return {"type": "string", "pattern": "^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"}
    if cls == values.UUID:
        return {"type": "string", "format": "uuid"}
    if cls == values.EMAIL:
        return {"type": "string", "format": "email"}
    found = values.pattern(cls)
    return {"type": "string", "pattern": found} if found else {"type": "string"}


def _one_of(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    unique = []
    for s in schemas:
        if s == {}:
            return {}  # any value
        if s not in unique:
            unique.append(s)
    return unique[0] if len(unique) == 1 else {"anyOf": unique}


def text_schema(classes: set[str] | frozenset[str]) -> dict[str, Any]:
    """A query, form or path value taking these classes."""
    return _one_of(
        [
            dict(_TYPED_TEXT.get(c) or _JSON_KINDS.get(c) or string_schema(c))
            for c in sorted(classes)
        ]
    )


def leaf_schema(classes: set[str]) -> dict[str, Any]:
    """A JSON leaf taking these classes: `int`, `float` and `bool` name the JSON value and the
    string holding one alike (core/values.py), so either is allowed."""
    schemas: list[dict[str, Any]] = []
    for c in sorted(classes):
        if c in _TYPED_TEXT:
            schemas.append(dict(_TYPED_TEXT[c]))
        schemas.append(dict(_JSON_KINDS.get(c) or string_schema(c)))
    return _one_of(schemas)


def body_path(path: str) -> list[str | None] | None:
    """`$.a["b c"].d[]` as ["a", "b c", "d", None] (None: an array's items); None if malformed."""
    if not path.startswith("$"):
        return None
    out: list[str | None] = []
    i = 1
    while i < len(path):
        m = _BODY_STEP.match(path, i)
        if m is None:
            return None
        if m.group(1) is not None:
            out.append(m.group(1))
        elif m.group(2) is not None:
            try:
                out.append(json.loads(m.group(2)))
            except ValueError:
                return None
        else:
            out.append(None)
        i = m.end()
    return out


class _Node:
    """One position of a body's shape: the fields under it, its items, its own leaf classes."""

    __slots__ = ("classes", "items", "props")

    def __init__(self) -> None:
        self.props: dict[str, _Node] = {}
        self.items: _Node | None = None
        self.classes: set[str] = set()

    def schema(self, open_body: bool, leaf: Any) -> dict[str, Any]:
        alternatives = []
        if self.props:
            alternatives.append(
                {
                    "type": "object",
                    "properties": {
                        k: v.schema(open_body, leaf) for k, v in sorted(self.props.items())
                    },
                    "additionalProperties": open_body,
                }
            )
        if self.items is not None:
            alternatives.append({"type": "array", "items": self.items.schema(open_body, leaf)})
        if self.classes:
            alternatives.append(leaf(self.classes))
        return _one_of(alternatives) if alternatives else {}


def body_schema(
    fields: dict[str, set[str]], open_body: bool, form: bool, what: str, notes: list[Note]
) -> dict[str, Any]:
    """The schema of a body from its learned field paths and their classes."""
    root = _Node()
    for path, classes in sorted(fields.items()):
        steps = body_path(path)
        if steps is None:
            notes.append(Note(what, "", f"body field {path[:80]!r} left out: not a field path"))
            continue
        node = root
        for step in steps:
            if step is None:
                node.items = node.items or _Node()
                node = node.items
            else:
                node = node.props.setdefault(step, _Node())
        node.classes |= classes
    if open_body and not root.props:
        return {"type": "object"} if form else {}
    return root.schema(open_body, text_schema if form else leaf_schema)


def _variable_schema(variable: str) -> dict[str, Any]:
    if variable == templates.REST:
        return {"type": "string", "minLength": 1}
    accepted = templates.accepted_classes(variable)
    return text_schema(accepted) if accepted else {"type": "string", "minLength": 1}


def _path_key(template: str) -> tuple[str, list[dict[str, Any]]]:
    segments = templates.split_path(template)
    out, params = [], []
    for i, seg in enumerate(segments, 1):
        if templates.is_variable(seg):
            name = f"param{i}"
            out.append("{" + name + "}")
            params.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "description": f"meshward template variable {seg}",
                    "schema": _variable_schema(seg),
                }
            )
        else:
            out.append("".join(_ENCODE.get(c, c) for c in seg))
    return templates.join_path(out), params


def _request_body(rule: EndpointRule, notes: list[Note], what: str) -> dict[str, Any] | None:
    kinds = rule.body_kinds - {"empty", "invalid"}
    if not kinds and not rule.open_body:
        return None
    types = sorted(rule.content_types) or [
        _DEFAULT_TYPES[k] for k in sorted(kinds) if k in _DEFAULT_TYPES
    ]
    content: dict[str, Any] = {}
    for ctype in types:
        kind = bodies.body_kind(ctype)
        if kind in ("json", "form") and (rule.body or rule.open_body):
            schema = body_schema(rule.body, rule.open_body, kind == "form", what, notes)
        else:
            schema = {}
        content[ctype] = {"schema": schema}
    if not content:
        return None
    return {"required": "empty" not in rule.body_kinds, "content": content}


def _operation(
    profile: ServiceProfile,
    rule: EndpointRule,
    path_params: list[dict[str, Any]],
    op_id: str,
    notes: list[Note],
) -> dict[str, Any]:
    what = f"{profile.destination} {rule.name}"
    params = list(path_params)
    if rule.template.endswith(templates.REST):
        notes.append(Note(profile.destination, rule.name, "{any} reads as one segment in OpenAPI"))
    for name, classes in sorted(rule.query.items()):
        params.append(
            {"name": name, "in": "query", "required": False, "schema": text_schema(classes)}
        )
    if rule.open_query:
        params.append(
            {
                "name": "other",
                "in": "query",
                "required": False,
                "style": "form",
                "explode": True,
                "description": "any other parameter (a person opened this rule to them)",
                "schema": {"type": "object", "additionalProperties": {"type": "string"}},
            }
        )
    op: dict[str, Any] = {"operationId": op_id, "summary": f"{rule.name} (learned)"}
    if params:
        op["parameters"] = params
    body = _request_body(rule, notes, what)
    if body is not None:
        op["requestBody"] = body
    statuses = sorted(s.upper() for s in rule.statuses if re.fullmatch(r"[1-5]xx", s))
    op["responses"] = {s: {"description": "seen while learning"} for s in statuses} or {
        "default": {"description": "no response was seen while learning"}
    }
    op["x-meshward-callers"] = rule_callers(profile, rule)
    return op


def _version(profile: ServiceProfile) -> str:
    if profile.seen.last <= 0:
        return "learned"
    return datetime.fromtimestamp(profile.seen.last, UTC).strftime("learned-%Y-%m-%dT%H:%M:%SZ")


def document(profile: ServiceProfile, notes: list[Note]) -> dict[str, Any]:
    """One service's OpenAPI document."""
    paths: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for rule in profile.rules():
        key, path_params = _path_key(rule.template)
        item = paths.setdefault(key, {})
        method = rule.method.lower()
        if method not in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            notes.append(Note(profile.destination, rule.name, "left out: no such OpenAPI method"))
            continue
        if method in item:
            notes.append(
                Note(
                    profile.destination,
                    rule.name,
                    f"left out: OpenAPI has one {rule.method} for {key}",
                )
            )
            continue
        base = re.sub(r"[^A-Za-z0-9]+", "_", f"{method} {key}").strip("_") or method
        op_id, n = base, 1
        while op_id in used:
            n += 1
            op_id = f"{base}_{n}"
        used.add(op_id)
        item[method] = _operation(profile, rule, path_params, op_id, notes)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"{profile.destination} (learned by meshward)",
            "version": _version(profile),
            "description": "What meshward learned this service is called with. meshward enforces "
            "more than this says: callers per operation, path value shapes, body sizes.",
        },
        "paths": {k: v for k, v in paths.items() if v},
        "x-meshward-destination": profile.destination,
    }


def openapi_documents(allowlist: Allowlist, destination: str | None = None) -> Export:
    """One OpenAPI document per service (or one); KeyError for an unknown destination."""
    export = Export()
    if destination is not None and destination not in allowlist.services:
        raise KeyError(destination)
    keys = [destination] if destination is not None else sorted(allowlist.services)
    for key in keys:
        export.objects.append(document(allowlist.services[key], export.notes))
    return export
