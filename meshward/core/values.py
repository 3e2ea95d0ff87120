"""Value classes: what kind of value a parameter, body field or path segment holds.

Learning records the classes a field takes; scoring flags a value whose class no learned class
covers. Classes are coarse on purpose: they must be stable across normal traffic (few false
alerts) while still separating an id from free text, or a number from a string.

One name per class, whatever carries the value: `int` is `?page=2`, `/users/{int}`, `"2"` and
`2` in a JSON body alike (docs/learning.md lists them). A JSON number or boolean is still told
from a string by how it is checked, not by its name: a text field that receives `true` is a
body-type-mismatch (`covered_strictly`).
"""

from __future__ import annotations

import re

# string classes, from the most to the least specific
EMPTY = "empty"
BOOL = "bool"
INT = "int"
FLOAT = "float"
UUID = "uuid"
HEX = "hex"
DATE = "date"
EMAIL = "email"
JWT = "jwt"
TOKEN = "token"
WORD = "word"
TEXT = "text"
ANY = "any"  # only ever written by a human widening a rule
# JSON values that are neither strings nor numbers or booleans (those are INT, FLOAT, BOOL)
JSON_NULL = "null"
JSON_OBJECT = "object"
JSON_ARRAY = "array"

STRING_CLASSES = (EMPTY, BOOL, INT, FLOAT, UUID, HEX, DATE, EMAIL, JWT, TOKEN, WORD, TEXT)
JSON_KINDS = (JSON_NULL, JSON_OBJECT, JSON_ARRAY)
ALL_CLASSES = frozenset(STRING_CLASSES + JSON_KINDS + (ANY,))
# what a JSON number or boolean is classed as: never folded into `text` (which covers strings
# only), so a number or a boolean stays checked as one
SCALARS = frozenset({INT, FLOAT, BOOL})
FOLDABLE = frozenset(STRING_CLASSES) - SCALARS
# the JSON kinds' names before one name served both (saved allowlists still load: read as these)
OLD_NAMES = {"integer": INT, "number": FLOAT, "boolean": BOOL}

_INT = re.compile(r"-?\d{1,63}")
_FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,128}")
_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[-+]\d{2}:?\d{2})?)?"
)
_EMAIL = re.compile(r"[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_JWT = re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
# random-looking ids: long runs of letters and digits (mixed), base64url alphabet
_TOKEN = re.compile(r"(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{16,256}")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.\- ]{0,127}")

# which learned class accepts which observed class (besides itself)
_COVERS: dict[str, frozenset[str]] = {
    TEXT: frozenset(STRING_CLASSES),
    WORD: frozenset({INT, FLOAT, HEX, UUID, DATE, BOOL}),
    TOKEN: frozenset({HEX, INT, UUID, JWT}),
    HEX: frozenset({INT}),
    FLOAT: frozenset({INT}),
    ANY: ALL_CLASSES,
}


_CACHE: dict[str, str] = {}  # short value -> class; values repeat across requests
_CACHE_MAX = 8192  # cleared when full: bounded whatever the cardinality
_CACHE_VALUE_MAX = 64  # longer values are rarely repeated


def classify(value: str) -> str:
    """Class of one string value (query value, path segment, JSON string, form field)."""
    cls = _CACHE.get(value)
    if cls is None:
        cls = _classify(value)
        if len(value) <= _CACHE_VALUE_MAX:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            _CACHE[value] = cls
    return cls


def _classify(value: str) -> str:
    if not value:
        return EMPTY
    n = len(value)
    if n <= 64 and _INT.fullmatch(value):
        return INT
    if n > 256:
        return TEXT
    low = value.lower()
    if low in ("true", "false"):
        return BOOL
    if n == 36 and _UUID.fullmatch(value):
        return UUID
    if _FLOAT.fullmatch(value):
        return FLOAT
    if _HEX.fullmatch(value):
        return HEX
    if value[0].isdigit() and _DATE.fullmatch(value):
        return DATE
    if "@" in value and _EMAIL.fullmatch(value):
        return EMAIL
    if value.startswith("eyJ") and _JWT.fullmatch(value):
        return JWT
    if _TOKEN.fullmatch(value):
        return TOKEN
    if _WORD.fullmatch(value):
        return WORD
    return TEXT


_LEAF_KINDS = {
    int: INT,
    float: FLOAT,
    bool: BOOL,
    type(None): JSON_NULL,
    dict: JSON_OBJECT,
    list: JSON_ARRAY,
}


def classify_leaf(value: object) -> str:
    """Class of one decoded body leaf: a JSON number or boolean as `int`, `float` or `bool`
    (what a string holding one is too), null, objects and arrays by their kind."""
    kind = _LEAF_KINDS.get(type(value))
    if kind is not None:
        return kind
    return classify(value) if isinstance(value, str) else TEXT


def covered(observed: str, learned: set[str] | frozenset[str]) -> bool:
    """Does any learned class accept a value of the observed class?"""
    if observed in learned:
        return True
    return any(observed in _COVERS.get(c, ()) for c in learned)


def covered_strictly(observed: str, learned: set[str] | frozenset[str]) -> bool:
    """Does a learned class accept a JSON value that is not a string (a number, a boolean,
    null)? Only its own class (a float field takes an integer) or `any`: the string classes
    that cover `int` or `bool` strings (`word`, `text`) do not take `2` or `true`, which type
    confusion (`{"password": true}`) sends."""
    return observed in learned or ANY in learned or (observed == INT and FLOAT in learned)


def is_string_class(cls: str) -> bool:
    return cls in STRING_CLASSES or cls == ANY


def widen(classes: set[str], limit: int = 6) -> set[str]:
    """Keep a learned class set small: past `limit` string classes, fold them into `text`
    (`int`, `float` and `bool` stay: they may be a JSON number or boolean, which `text` does
    not take)."""
    strings = [c for c in classes if c in FOLDABLE]
    if len(strings) <= limit:
        return classes
    return {c for c in classes if c not in FOLDABLE} | {TEXT}


def decimal(text: str, max_digits: int = 20) -> int | None:
    """A number of ASCII digits (at most max_digits: 20 covers uint64), else None: isdigit()
    alone passes `²`, which int() refuses, as it refuses more than 4,300 digits; one odd value
    must not cost the whole entry or exchange."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= max_digits else None


# the expression each string class's values match, for documents that describe the classes
# (the OpenAPI export); `text`, `any` and `empty` need none
_PATTERNS = {
    INT: _INT,
    FLOAT: _FLOAT,
    UUID: _UUID,
    HEX: _HEX,
    DATE: _DATE,
    EMAIL: _EMAIL,
    JWT: _JWT,
    TOKEN: _TOKEN,
    WORD: _WORD,
}


def pattern(cls: str) -> str | None:
    """The whole-value regular expression of a string class (ECMA-262 compatible), or None."""
    found = _PATTERNS.get(cls)
    return f"^(?:{found.pattern})$" if found is not None else None
