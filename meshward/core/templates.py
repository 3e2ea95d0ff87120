"""Path templates: which path segments are variables, by type and by cardinality.

A segment that looks like an id (integer, UUID, hex id, date, e-mail, JWT, token) becomes a typed
variable at once (`/users/{int}`). A position that takes more than K distinct literals under the
same prefix becomes `{str}` (cardinality-based). Humans may write `{str}` or `{any}` (rest of the
path) when they widen a rule.
"""

from __future__ import annotations

from meshward.core import values

# typed variables a segment may become, and the value classes each accepts
TYPED = {
    values.INT: "{int}",
    values.UUID: "{uuid}",
    values.HEX: "{hex}",
    values.DATE: "{date}",
    values.EMAIL: "{email}",
    values.JWT: "{jwt}",
    values.TOKEN: "{token}",
}
STR = "{str}"  # any one non-empty segment (cardinality-based or human-widened)
REST = "{any}"  # the rest of the path, any depth (human-widened only)
_ACCEPTS: dict[str, frozenset[str]] = {
    "{int}": frozenset({values.INT}),
    "{uuid}": frozenset({values.UUID}),
    "{hex}": frozenset({values.HEX, values.INT}),
    "{date}": frozenset({values.DATE}),
    "{email}": frozenset({values.EMAIL}),
    "{jwt}": frozenset({values.JWT}),
    "{token}": frozenset({values.TOKEN, values.HEX, values.INT, values.UUID, values.JWT}),
}
VARIABLES = frozenset(_ACCEPTS) | {STR, REST}


def split_path(path: str) -> list[str]:
    """Segments of a path (no query). `/a/b/` keeps its trailing empty segment; `/` is []."""
    if not path or path == "/":
        return []
    return path[1:].split("/") if path.startswith("/") else path.split("/")


def join_path(segments: list[str]) -> str:
    return "/" + "/".join(segments)


def segment_variable(segment: str) -> str | None:
    """The typed variable a literal segment becomes, or None if it stays literal."""
    if not segment:
        return None
    c = segment[0]
    if not (c.isdigit() or c in "abcdefABCDEFe" or len(segment) >= 16 or "@" in segment):
        return None  # fast path: most literal segments ('api', 'users') start otherwise
    return TYPED.get(values.classify(segment))


def variable_accepts(variable: str, segment: str) -> bool:
    """Does a variable segment of a template accept this observed segment?"""
    if variable in (STR, REST):
        return bool(segment)
    return values.classify(segment) in _ACCEPTS.get(variable, frozenset())


def accepted_classes(variable: str) -> frozenset[str]:
    """The value classes a typed variable accepts (empty for `{str}` and `{any}`: any value)."""
    return _ACCEPTS.get(variable, frozenset())


def is_variable(segment: str) -> bool:
    return segment in VARIABLES


# every variable, in the order an error message lists them
KNOWN = (*TYPED.values(), STR, REST)


def parse(template: str) -> list[str]:
    """The segments of a rule's path template, checked: the one parser of every template read
    from a document (import, the store, replicas, the Allowlist objects). ValueError names an
    unknown variable (`/x/{nope}` would otherwise be a literal that matches nothing) and the
    known ones."""
    if not template.startswith("/"):
        raise ValueError(f"rule path must start with '/': {template!r}")
    segments = split_path(template)
    for i, seg in enumerate(segments):
        if seg in VARIABLES:
            if seg == REST and i != len(segments) - 1:
                raise ValueError(f"path {template!r}: {REST} (the rest of the path) must be last")
        elif "{" in seg or "}" in seg:
            raise ValueError(
                f"path {template!r}: unknown template variable {seg!r} "
                f"(a variable is a whole segment, one of {', '.join(KNOWN)})"
            )
    return segments
