"""What people decided about one service's learned rules: the review mark, rule approvals,
who removed which rule (the tombstones themselves are the profile's `removed` keys), and the
rules a person edited (`pinned`: the content they wrote, which learning never changes).

Replicas merge this state as they merge learning, so every part is a join: each entry is a
last-writer-wins register ordered by (time, who, digest), the mark too, and the merge of two
states keeps, per key, the later entry. Merging the same state twice, or in any order, gives
the same result. Pure: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

RuleKey = tuple[str, str]  # (method, path template)
MAX_ENTRIES = 4096  # approvals and removals kept per service (the store's tombstone bound)
MAX_WHO = 256  # characters of a principal kept


@dataclass(frozen=True, order=True)
class Stamp:
    """Who did something, when (epoch seconds); `digest` is what they saw of the rule."""

    at: float
    by: str
    digest: str = ""

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"by": self.by, "at": round(self.at, 3)}
        if self.digest:
            doc["digest"] = self.digest
        return doc

    @classmethod
    def from_doc(cls, doc: object) -> Stamp:
        if not isinstance(doc, dict):
            raise ValueError("a review stamp must be a mapping")
        by, at, digest = doc.get("by", ""), doc.get("at", 0), doc.get("digest", "")
        if not isinstance(by, str) or not isinstance(digest, str):
            raise ValueError("a review stamp's by and digest must be strings")
        if isinstance(at, bool) or not isinstance(at, int | float) or not at >= 0:
            raise ValueError("a review stamp's at must be epoch seconds")
        return cls(float(at), by[:MAX_WHO], digest[:64])


def _later(a: Stamp | None, b: Stamp | None) -> Stamp | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


@dataclass
class Review:
    """One service's review state."""

    mark: Stamp | None = None  # the last review of the whole service
    approved: dict[RuleKey, Stamp] = field(default_factory=dict)  # digest: the content approved
    removed: dict[RuleKey, Stamp] = field(default_factory=dict)  # who removed a rule, when
    # a person's edit of a rule: (who, when, digest) and the rule's document as they wrote it
    pinned: dict[RuleKey, tuple[Stamp, dict[str, Any]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.mark or self.approved or self.removed or self.pinned)

    def join(self, other: Review) -> Review:
        pinned = dict(self.pinned)
        for k, pin in other.pinned.items():
            if k not in pinned or _order(pinned[k]) < _order(pin):
                pinned[k] = pin
        return Review(
            _later(self.mark, other.mark),
            _join(self.approved, other.approved),
            _join(self.removed, other.removed),
            pinned,
        )

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.mark is not None:
            doc["mark"] = self.mark.to_doc()
        for name, table in (("approved", self.approved), ("removed", self.removed)):
            if table:
                doc[name] = [
                    {"method": m, "path": p, **s.to_doc()}
                    for (m, p), s in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0]))
                ]
        if self.pinned:
            doc["pinned"] = [
                {"method": m, "path": p, **s.to_doc(), "rule": rule}
                for (m, p), (s, rule) in sorted(
                    self.pinned.items(), key=lambda kv: (kv[0][1], kv[0][0])
                )
            ]
        return doc

    @classmethod
    def from_doc(cls, doc: object) -> Review:
        """Raises ValueError on a malformed document."""
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise ValueError("review must be a mapping")
        out = cls(Stamp.from_doc(doc["mark"]) if doc.get("mark") else None)
        for name in ("approved", "removed"):
            entries = doc.get(name) or []
            if not isinstance(entries, list):
                raise ValueError(f"review.{name} must be a list")
            table: dict[RuleKey, Stamp] = getattr(out, name)
            for e in entries[:MAX_ENTRIES]:
                m, p = (e.get("method"), e.get("path")) if isinstance(e, dict) else (None, None)
                if not isinstance(m, str) or not m or not isinstance(p, str) or p[:1] != "/":
                    raise ValueError(f"review.{name}: an entry needs a method and a path")
                key = (m.upper(), p)
                table[key] = _later(table.get(key), Stamp.from_doc(e)) or Stamp(0, "")
        pins = doc.get("pinned") or []
        if not isinstance(pins, list):
            raise ValueError("review.pinned must be a list")
        for e in pins[:MAX_ENTRIES]:
            m, p = (e.get("method"), e.get("path")) if isinstance(e, dict) else (None, None)
            if not isinstance(m, str) or not m or not isinstance(p, str) or p[:1] != "/":
                raise ValueError("review.pinned: an entry needs a method and a path")
            rule = e.get("rule")
            if not isinstance(rule, dict) or rule.get("method") != m or rule.get("path") != p:
                raise ValueError(f"review.pinned {m} {p}: its rule must be that rule")
            out.pinned[(m.upper(), p)] = (Stamp.from_doc(e), rule)
        return out


def _order(pin: tuple[Stamp, dict[str, Any]]) -> tuple[Stamp, str]:
    """Pins are ordered by their stamp, then their content (equal stamps, whatever wrote them,
    still merge the same way in every order)."""
    return pin[0], json.dumps(pin[1], sort_keys=True)


def _join(a: dict[RuleKey, Stamp], b: dict[RuleKey, Stamp]) -> dict[RuleKey, Stamp]:
    out = dict(a)
    for k, s in b.items():
        out[k] = _later(out.get(k), s) or s
    if len(out) > MAX_ENTRIES:  # the newest kept: a join too (the N largest of a union)
        out = dict(sorted(out.items(), key=lambda kv: kv[1], reverse=True)[:MAX_ENTRIES])
    return out
