"""The shape of the values a `{str}` path position took while it was learned.

A position generalised by cardinality (more than K distinct literals) accepts any segment; its
shape keeps what those segments looked like, so `/users/admin` where user ids look like
`u-83hd72` deviates (reason `path-value-class`). A shape holds:

- `chars`: the character classes seen (`a` lower-case, `A` upper-case, `9` digit, `u` any
  other letter or non-ASCII character, every other character as itself: `-`, `.`, `_`, ...);
- `always`: the classes every value had (a digit in every id, say);
- `length`: the shortest and longest value, accepted with a margin (LENGTH_SLACK);
- `forms`: the separator skeletons (`u-83hd72` -> `x-x`, `red-q1.pdf` -> `x-x.x`, a repeated
  unit once: `blue-summer-dress` -> `x-x`), at most
  MAX_FORMS of them, else any form (`OPEN`).

Shapes merge as a join (classes and forms by union, `always` by intersection, lengths by
min/max, an open shape absorbs), so replicas that learn apart agree whatever the order
(allowlist_merge). A `{str}` a person wrote accepts anything: its shape is open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_FORMS = 8
MAX_FORM_LEN = 24  # skeleton characters kept (a longer one ends in "~")
OPEN = "*"


def _char_class(c: str) -> str:
    if "a" <= c <= "z":
        return "a"
    if "A" <= c <= "Z":
        return "A"
    if "0" <= c <= "9":
        return "9"
    if c.isalnum() or not c.isascii():
        return "u"
    return c


def char_classes(value: str) -> set[str]:
    return {_char_class(c) for c in value}


_REPEAT = re.compile(r"(x[^x])\1+")


def form(value: str) -> str:
    """The separator skeleton: each run of letters and digits as `x`, other characters kept,
    a unit repeated once (`blue-summer-dress` and `red-hat` are both `x-x`)."""
    return _REPEAT.sub(r"\1", _skeleton(value))


def _skeleton(value: str) -> str:
    out: list[str] = []
    for c in value:
        if _char_class(c) in "aA9u":
            if not out or out[-1] != "x":
                out.append("x")
        else:
            out.append(c)
        if len(out) > MAX_FORM_LEN:
            return "".join(out[:MAX_FORM_LEN]) + "~"
    return "".join(out)


def length_ok(n: int, low: int, high: int) -> bool:
    """Within the learned lengths, with a margin: a third shorter, half longer, 2 either way."""
    return min(low * 2 // 3, low - 2) <= n <= max(high * 3 // 2, high + 2)


@dataclass
class PathShape:
    """The shape of one `{str}` position's values (see the module doc). `always` None and
    `low` -1: nothing learned yet (the identity of the join)."""

    chars: set[str] = field(default_factory=set)
    always: set[str] | None = None
    low: int = -1
    high: int = -1
    forms: set[str] = field(default_factory=set)
    open: bool = False  # any value (human-widened, or too many forms to tell)

    @classmethod
    def opened(cls) -> PathShape:
        return cls(open=True)

    def learn(self, value: str) -> None:
        if self.open:
            return
        classes = char_classes(value)
        self.chars |= classes
        self.always = classes if self.always is None else self.always & classes
        n = len(value)
        self.low = n if self.low < 0 else min(self.low, n)
        self.high = max(self.high, n)
        self._add_forms({form(value)})

    def _add_forms(self, forms: set[str]) -> None:
        if OPEN in forms:
            self.forms = {OPEN}
            return
        if OPEN not in self.forms:
            self.forms |= forms
            if len(self.forms) > MAX_FORMS:
                self.forms = {OPEN}

    def accepts(self, value: str) -> bool:
        if self.open or self.low < 0:
            return True
        classes = char_classes(value)
        if not classes <= self.chars or (self.always and not self.always <= classes):
            return False
        if not length_ok(len(value), self.low, self.high):
            return False
        return not self.forms or OPEN in self.forms or form(value) in self.forms

    def join(self, other: PathShape) -> PathShape:
        """The least shape covering both (commutative, associative, idempotent)."""
        if self.open or other.open:
            return PathShape.opened()
        out = PathShape(chars=self.chars | other.chars)
        if self.always is None:
            out.always = None if other.always is None else set(other.always)
        elif other.always is None:
            out.always = set(self.always)
        else:
            out.always = self.always & other.always
        lows = [x for x in (self.low, other.low) if x >= 0]
        out.low = min(lows, default=-1)
        out.high = max(self.high, other.high)
        out._add_forms(self.forms | other.forms)
        return out

    def to_doc(self) -> dict[str, Any] | str:
        if self.open:
            return OPEN
        return {
            "chars": "".join(sorted(self.chars)),
            "always": "".join(sorted(self.always or ())),
            "length": [max(self.low, 0), max(self.high, 0)],
            "forms": sorted(self.forms),
        }

    @classmethod
    def from_doc(cls, doc: object) -> PathShape:
        if doc == OPEN:
            return cls.opened()
        if not isinstance(doc, dict):
            raise ValueError("a path value shape is '*' or a mapping")
        chars, always, length, forms = (
            doc.get("chars", ""),
            doc.get("always", ""),
            doc.get("length"),
            doc.get("forms", []),
        )
        if not isinstance(chars, str) or not isinstance(always, str):
            raise ValueError("path value 'chars' and 'always' are strings of classes")
        if not (isinstance(length, list) and len(length) == 2 and all(_nat(x) for x in length)):
            raise ValueError("path value 'length' is [shortest, longest]")
        if not isinstance(forms, list) or not all(isinstance(f, str) for f in forms):
            raise ValueError("path value 'forms' is a list of strings")
        shape = cls(chars=set(chars), always=set(always), low=length[0], high=length[1])
        shape._add_forms(set(forms))
        return shape


def _nat(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 20


def join_shapes(a: dict[int, PathShape], b: dict[int, PathShape]) -> dict[int, PathShape]:
    """Per position, the join of two rules' shapes (a position one lacks: the other's)."""
    out: dict[int, PathShape] = {}
    for pos in sorted(set(a) | set(b)):
        x, y = a.get(pos), b.get(pos)
        out[pos] = (x or y or PathShape()).join(y or x or PathShape())
    return out
