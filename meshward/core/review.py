"""Reviewing one service's learned rules: the view a person reviews, and their edits.

The view (`view`): every rule with its callers, parameters and their value classes, body
shape, counts, first and last seen; what changed since the last review (a rule is `new` when
never approved, `changed` when its content differs from what was approved, `approved`
otherwise; rules removed since the mark); and the rules to look at twice (`second_look`):
learned from a single caller, or in a short burst (first to last seen under
`BURST_SECONDS`), the shapes a scan or one misbehaving client leaves.

The edits (`approve`, `remove`, `widen`, `edit`) are steps on the shared state of one
destination (`core.allowlist_merge.Shared`): the embedded store applies them to its one
engine's profile, the cluster store inside an optimistic-concurrency write of the stored
object, so both run the same code. Learning merges as a join (content only grows), so:

- a removal is a tombstone (`Shared.removed`, a union: no replica re-sending the old rule
  brings it back; the engine never learns a tombstoned rule again);
- an edit pins the rule a person wrote (`Review.pinned`, a last-writer-wins register per rule:
  a join too): what the replicas learn of that rule still merges underneath and is counted,
  but the pinned content is what every engine enforces, and learning never widens it, so an
  edit may narrow a rule. An edit that changes the method or template also removes the old
  rule (tombstone) and clears a tombstone on the new one (a deliberate non-join step, taken
  only under the store's resourceVersion check, as `compact` is);
- widening adds content: to the pin of an edited rule, else to the learned content (a join,
  so it survives every merge, and learning goes on extending it).

Pure: no I/O, no clock (the caller stamps each edit).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from meshward.core import values
from meshward.core.allowlist import EndpointRule, Limits
from meshward.core.allowlist_merge import Shared, join_rules, pinned_rule, profile_doc, rule_key
from meshward.core.reviewstate import RuleKey, Stamp

SINGLE_CALLER = 1  # callers at or below this: a second look
BURST_SECONDS = 600.0  # learned within less than this, first to last seen: a second look
ACTIONS = ("approve", "remove", "widen", "edit")


class ReviewError(ValueError):
    """An edit that cannot be made; `status` is the HTTP answer (400, 404, 409)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def digest(rule_doc: dict[str, Any]) -> str:
    """What a person approves of a rule: its content (callers included), not its counters."""
    content = {k: v for k, v in rule_doc.items() if k not in ("count", "first_seen", "last_seen")}
    if isinstance(content.get("sources"), dict):
        content["sources"] = sorted(content["sources"])
    raw = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def second_look(rule_doc: dict[str, Any]) -> list[str]:
    """Why a learned rule deserves a second look ([] when it does not)."""
    out = []
    if len(rule_doc.get("sources") or {}) <= SINGLE_CALLER:
        out.append("single-caller")
    first, last = float(rule_doc.get("first_seen") or 0), float(rule_doc.get("last_seen") or 0)
    if last - first < BURST_SECONDS:
        out.append("short-burst")
    return out


def view(doc: dict[str, Any]) -> dict[str, Any]:
    """A profile document (`ServiceProfile.to_doc()`, with its review) as the review page shows
    it."""
    review = doc.get("review") or {}
    mark = review.get("mark")
    approved = {(e["method"], e["path"]): e for e in review.get("approved") or []}
    rules = []
    counts = {"new": 0, "changed": 0, "approved": 0, "second_look": 0}
    for e in doc.get("endpoints") or []:
        d = digest(e)
        was = approved.get((e["method"], e["path"]))
        status = "new" if was is None else "approved" if was.get("digest") == d else "changed"
        look = [] if e.get("pinned") else second_look(e)  # written by a person, not learned
        counts[status] += 1
        counts["second_look"] += bool(look)
        rules.append(
            {
                "method": e["method"],
                "path": e["path"],
                "callers": e.get("sources") or {},
                "query": e.get("query") or {},
                "body": e.get("body") or {},
                "body_kinds": e.get("body_kinds") or [],
                "content_types": e.get("content_types") or [],
                "count": e.get("count", 0),
                "first_seen": e.get("first_seen", 0),
                "last_seen": e.get("last_seen", 0),
                "digest": d,
                "status": status,
                "approved": {k: was[k] for k in ("by", "at") if k in was} if was else None,
                "second_look": look,
                "edited": bool(e.get("pinned")),
                # the rule as a person edits it (the allowlist document's form, no counters)
                "rule": {
                    k: sorted(v) if k == "sources" else v
                    for k, v in e.items()
                    if k not in ("count", "first_seen", "last_seen", "pinned")
                },
            }
        )
    since = float(mark["at"]) if mark else 0.0
    stamped = {(e["method"], e["path"]): e for e in review.get("removed") or []}
    removed = []
    for t in doc.get("removed") or []:  # a tombstone written with kubectl has no stamp
        e = stamped.get((t["method"], t["path"])) or {**t, "by": "", "at": 0}
        removed.append({**e, "since_review": float(e.get("at", 0)) > since})
    counts["removed_since_review"] = sum(e["since_review"] for e in removed)
    return {
        "destination": doc["destination"],
        "count": doc.get("count", 0),
        "first_seen": doc.get("first_seen", 0),
        "last_seen": doc.get("last_seen", 0),
        "reviewed": mark,
        "changes": counts,
        "rules": rules,
        "removed": removed,
    }


# ---- the edits, on the shared state of one destination


def _visible(s: Shared, key: RuleKey) -> EndpointRule:
    rule = pinned_rule(s, key) or s.rules.get(key)
    if rule is None or key in s.removed:
        raise ReviewError(f"{s.destination} has no rule {key[0]} {key[1]}", 404)
    return rule


def _digests(s: Shared) -> dict[RuleKey, str]:
    return {rule_key(e["method"], e["path"]): digest(e) for e in profile_doc(s)["endpoints"]}


def approve(s: Shared, keys: list[RuleKey] | None, who: str, now: float) -> Shared:
    """Approve the given rules as they are now (all of them, and the service's review mark,
    with `keys` None)."""
    shown = _digests(s)
    for key in keys if keys is not None else list(shown):
        if key not in shown:
            raise ReviewError(f"{s.destination} has no rule {key[0]} {key[1]}", 404)
        s.review.approved[key] = Stamp(now, who, shown[key])
    if keys is None:
        s.review.mark = Stamp(now, who)
    return s


def remove(s: Shared, key: RuleKey, who: str, now: float) -> Shared:
    """Tombstone a rule: hidden from every replica's engine, never learned again."""
    _visible(s, key)
    s.removed.add(key)
    s.review.removed[key] = Stamp(now, who)
    s.review.approved.pop(key, None)
    return s


def widening(key: RuleKey, given: dict[str, Any]) -> EndpointRule:
    """The content a widen request adds: `query` / `body` as {name: [classes]} or "*" (any
    parameter, any field), `callers` as a list of identities. Raises ReviewError."""
    extra = set(given) - {"query", "body", "callers"}
    if extra:
        raise ReviewError(f"widen takes query, body and callers, not {sorted(extra)[0]!r}")
    doc: dict[str, Any] = {"method": key[0], "path": key[1]}
    for part in ("query", "body"):
        v = given.get(part)
        if v == "*":
            doc[part] = {"*": [values.ANY]}
        elif v is not None:
            if not isinstance(v, dict) or not v:
                raise ReviewError(f'{part} must be "*" or a mapping of names to value classes')
            doc[part] = v
    callers = given.get("callers") or []
    if not isinstance(callers, list) or not all(isinstance(c, str) and c for c in callers):
        raise ReviewError("callers must be a list of identities (namespace/workload)")
    doc["sources"] = callers
    if not any(given.get(p) for p in ("query", "body", "callers")):
        raise ReviewError("widen needs query, body or callers")
    try:
        return EndpointRule.from_doc(doc)
    except ValueError as exc:
        raise ReviewError(str(exc)) from None


def widen(
    s: Shared, key: RuleKey, more: EndpointRule, who: str, now: float, limits: Limits
) -> Shared:
    """Add content to a rule: to its pin when a person edited it, else to what was learned
    (a join: it survives every merge)."""
    old = _visible(s, key)
    if key in s.review.pinned:
        return _pin(s, key, join_rules(old, more, limits), who, now)
    s.rules[key] = join_rules(old, more, limits)
    s.sources |= set(more.sources)
    return s


def _pin(s: Shared, key: RuleKey, rule: EndpointRule, who: str, now: float) -> Shared:
    doc = rule.to_doc(stats=False)
    doc.pop("pinned", None)
    s.review.pinned[key] = (Stamp(now, who, digest(doc)), doc)
    s.sources |= set(rule.sources)
    return s


def parse_rule(doc: object) -> EndpointRule:
    """A rule as a person writes it (the allowlist document's form), checked. Raises
    ReviewError."""
    if not isinstance(doc, dict):
        raise ReviewError('rule must be a mapping like {"method": "GET", "path": "/x"}')
    try:
        rule = EndpointRule.from_doc({k: v for k, v in doc.items() if k != "count"})
    except (TypeError, ValueError) as exc:
        raise ReviewError(f"rule: {exc}") from None
    if not rule.method.isalpha() or len(rule.method) > 32:
        raise ReviewError("rule: method must be letters (GET, POST, ...)")
    return rule


def edit(
    s: Shared, key: RuleKey, new: EndpointRule, who: str, now: float, limits: Limits
) -> Shared:
    """Make a rule exactly `new` (pinned, approved by its editor); another method or template
    removes the old rule (tombstoned)."""
    _visible(s, key)
    new_key = rule_key(new.method, new.template)
    if new_key != key:
        remove(s, key, who, now)
        s.removed.discard(new_key)  # re-allowed by a person (under the store's version check)
        s.review.removed.pop(new_key, None)
    _pin(s, new_key, join_rules(new, new, limits), who, now)
    s.review.approved[new_key] = Stamp(now, who, _digests(s)[new_key])
    return s
