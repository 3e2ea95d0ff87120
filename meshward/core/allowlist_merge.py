"""Merging what several replicas learned about one service, so that no order of merges matters.

Several `meshward serve` replicas learn the same destination and share one stored copy. Their
writes cross, retry and repeat, so the merge is a join of a semilattice: commutative,
associative and idempotent. A `Shared` profile keeps two things apart:

* **content** (what a request may look like): rules, their callers, parameters and value
  classes, body shapes, content types, statuses, size bands; merged by union;
* **counters** (counts, first/last seen), one set *per replica id*: a replica's own counters
  only grow, so the merge takes the max of each (min of first seen, max of last seen) and the
  displayed count is the sum over replicas. Merging the same update twice does not double count.

**Tombstones** (`removed`: method + path template a person removed) are a union too and hide
their rule from `profile_doc` whatever a replica keeps learning. Deleting a tombstone is a human
edit of the stored object, not a merge; the store's `compact` drops tombstoned content so that
the rule only comes back by being learned again.

**Bounds**: every keyed set keeps the N smallest keys (rules by (path, method), callers,
parameters, body fields, content types, as `Limits` says). "The N smallest of a union" is
itself a join, so a bounded merge stays associative, and a key once refused stays refused.
String value classes collapse to `text` past the widening limit, or as soon as `text` (which
covers them all) is present: also a join. `int`, `float` and `bool` never collapse (a JSON
number or boolean is not text).

Pure: no I/O. The documents in and out are `ServiceProfile.to_doc()` / `import_doc` documents;
rule content is parsed by `EndpointRule.from_doc`, so validation is the allowlist's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshward.core import values
from meshward.core.allowlist import EndpointRule, Limits, removed_keys
from meshward.core.pathvalues import join_shapes
from meshward.core.reviewstate import Review

RuleKey = tuple[str, str]  # (method, path template)
WIDEN_LIMIT = 6  # string classes kept before they collapse to `text` (values.widen's default)


@dataclass
class Seen:
    """One replica's counter of one thing: count (max-merged), first and last seen."""

    count: int = 0
    first: float = 0.0  # 0: not set
    last: float = 0.0

    def join(self, other: Seen) -> Seen:
        firsts = [f for f in (self.first, other.first) if f > 0]
        return Seen(
            max(self.count, other.count), min(firsts, default=0.0), max(self.last, other.last)
        )

    def to_list(self) -> list[Any]:
        return [self.count, round(self.first, 3), round(self.last, 3)]

    @classmethod
    def from_list(cls, v: object) -> Seen:
        if not isinstance(v, list) or len(v) < 3:
            raise ValueError("a counter must be [count, first_seen, last_seen]")
        return cls(max(0, int(v[0])), max(0.0, float(v[1])), max(0.0, float(v[2])))


@dataclass
class RuleCounters:
    seen: Seen = field(default_factory=Seen)
    sources: dict[str, int] = field(default_factory=dict)  # caller -> count


@dataclass
class Counters:
    """Everything one replica counted for one destination."""

    seen: Seen = field(default_factory=Seen)
    sources: dict[str, Seen] = field(default_factory=dict)
    rules: dict[RuleKey, RuleCounters] = field(default_factory=dict)


@dataclass
class Shared:
    """The replicated state of one destination: content, tombstones, per-replica counters."""

    destination: str
    rules: dict[RuleKey, EndpointRule] = field(default_factory=dict)  # content only
    sources: set[str] = field(default_factory=set)
    removed: set[RuleKey] = field(default_factory=set)
    replicas: dict[str, Counters] = field(default_factory=dict)
    review: Review = field(default_factory=Review)  # people's marks (core/reviewstate.py)

    def same(self, other: Shared) -> bool:
        """Equal content, tombstones and counters (rules compared by their documents)."""
        return to_object(self) == to_object(other)


def rule_key(method: str, path: str) -> RuleKey:
    return (method.upper(), path)


def _sort_key(k: RuleKey) -> tuple[str, str]:
    return (k[1], k[0])


def _smallest(keys: set[str], n: int) -> set[str]:
    return keys if len(keys) <= n else set(sorted(keys)[:n])


def _classes(a: set[str], b: set[str]) -> set[str]:
    """Union, with string classes collapsed to `text` when it is there or past the limit
    (`int`, `float`, `bool` kept: they may be JSON numbers or booleans, as in values.widen)."""
    out = a | b
    strings = {c for c in out if c in values.FOLDABLE}
    if values.TEXT in out or len(strings) > WIDEN_LIMIT:
        out = (out - strings) | {values.TEXT}
    return out


def _fields(a: dict[str, set[str]], b: dict[str, set[str]], n: int) -> dict[str, set[str]]:
    keep = _smallest(set(a) | set(b), n)
    return {k: _classes(a.get(k, set()), b.get(k, set())) for k in sorted(keep)}


def _content(a: EndpointRule | None, b: EndpointRule | None, limits: Limits) -> EndpointRule:
    """The join of two rules' content (no counters: those live per replica)."""
    if a is None or b is None:
        a = b = a or b
    assert a is not None and b is not None
    out = EndpointRule(a.method, a.template)
    out.sources = dict.fromkeys(
        sorted(_smallest(set(a.sources) | set(b.sources), limits.max_sources)), 0
    )
    out.query = _fields(a.query, b.query, limits.max_params)
    out.body = _fields(a.body, b.body, limits.max_body_fields)
    out.content_types = _smallest(a.content_types | b.content_types, limits.max_content_types)
    out.body_kinds = a.body_kinds | b.body_kinds
    lows = [x for x in (a.size_min, b.size_min) if x >= 0]
    out.size_min = min(lows, default=-1)
    out.size_max = max(a.size_max, b.size_max) if lows else -1
    out.statuses = a.statuses | b.statuses
    out.open_query = a.open_query or b.open_query
    out.open_body = a.open_body or b.open_body
    out.path_values = join_shapes(a.path_values, b.path_values)
    return out


def join_rules(a: EndpointRule, b: EndpointRule, limits: Limits | None = None) -> EndpointRule:
    """The join of two rules' content (a person widening a rule: core/review.py)."""
    return _content(a, b, limits or Limits())


def _join_counters(
    a: Counters | None, b: Counters | None, rules: set[RuleKey], sources: set[str]
) -> Counters:
    a, b = a or Counters(), b or Counters()
    out = Counters(a.seen.join(b.seen))
    for s in sorted((set(a.sources) | set(b.sources)) & sources):
        out.sources[s] = a.sources.get(s, Seen()).join(b.sources.get(s, Seen()))
    for k in sorted((set(a.rules) | set(b.rules)) & rules, key=_sort_key):
        ra, rb = a.rules.get(k, RuleCounters()), b.rules.get(k, RuleCounters())
        callers = set(ra.sources) | set(rb.sources)
        out.rules[k] = RuleCounters(
            ra.seen.join(rb.seen),
            {s: max(ra.sources.get(s, 0), rb.sources.get(s, 0)) for s in sorted(callers)},
        )
    return out


def merge_counted(a: Shared, b: Shared, limits: Limits | None = None) -> tuple[Shared, int]:
    """The join of two states of one destination, and how many rules the bound refused."""
    if a.destination != b.destination:
        raise ValueError(f"cannot merge {a.destination!r} with {b.destination!r}")
    limits = limits or Limits()
    union = set(a.rules) | set(b.rules)
    keep = set(sorted(union, key=_sort_key)[: limits.max_endpoints])
    out = Shared(a.destination)
    for k in sorted(keep, key=_sort_key):
        out.rules[k] = _content(a.rules.get(k), b.rules.get(k), limits)
    out.sources = _smallest(a.sources | b.sources, limits.max_sources)
    out.removed = a.removed | b.removed
    out.review = a.review.join(b.review)
    for rid in sorted(set(a.replicas) | set(b.replicas)):
        out.replicas[rid] = _join_counters(
            a.replicas.get(rid), b.replicas.get(rid), keep, out.sources
        )
    return out, len(union) - len(keep)


def merge(a: Shared, b: Shared, limits: Limits | None = None) -> Shared:
    return merge_counted(a, b, limits)[0]


def compact(s: Shared) -> Shared:
    """Drop the content and counters of tombstoned rules (a deliberate, non-join step that the
    store takes under optimistic concurrency): the rule can then only come back by being
    learned again after a person removed the tombstone."""
    out = Shared(
        s.destination,
        {k: r for k, r in s.rules.items() if k not in s.removed},
        set(s.sources),
        set(s.removed),
        review=s.review,
    )
    for rid, c in s.replicas.items():
        out.replicas[rid] = Counters(
            c.seen, dict(c.sources), {k: r for k, r in c.rules.items() if k not in s.removed}
        )
    return out


RETIRED = "retired"  # the counters of replicas that are gone, folded together


def retire(s: Shared, live: set[str]) -> Shared:
    """Fold the counters of replicas not in `live` into one `retired` entry, so that replica
    ids that come and go (pod names across rollouts) do not grow the object. Not a join: the
    store does it under optimistic concurrency, and only for ids that can never write again."""
    gone = [rid for rid in s.replicas if rid not in live and rid != RETIRED]
    if not gone:
        return s
    out = Shared(s.destination, dict(s.rules), set(s.sources), set(s.removed), review=s.review)
    folded = s.replicas.get(RETIRED) or Counters()
    for rid in gone:
        c = s.replicas[rid]
        folded = Counters(
            _add(folded.seen, c.seen),
            {
                n: _add(folded.sources.get(n, Seen()), c.sources.get(n, Seen()))
                for n in set(folded.sources) | set(c.sources)
            },
            {
                k: RuleCounters(
                    _add(
                        folded.rules.get(k, RuleCounters()).seen,
                        c.rules.get(k, RuleCounters()).seen,
                    ),
                    _sum(
                        folded.rules.get(k, RuleCounters()).sources,
                        c.rules.get(k, RuleCounters()).sources,
                    ),
                )
                for k in set(folded.rules) | set(c.rules)
            },
        )
    out.replicas = {rid: c for rid, c in s.replicas.items() if rid not in gone}
    out.replicas[RETIRED] = folded
    return out


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(set(a) | set(b))}


# ---- from and to the allowlist's documents


def _others(base: Shared | None, replica: str) -> Counters:
    """The sum of every other replica's counters in `base` (what the engine was handed)."""
    total = Counters()
    if base is None:
        return total
    for rid, c in base.replicas.items():
        if rid == replica:
            continue
        total.seen.count += c.seen.count
        for s, seen in c.sources.items():
            total.sources.setdefault(s, Seen()).count += seen.count
        for k, rc in c.rules.items():
            mine = total.rules.setdefault(k, RuleCounters())
            mine.seen.count += rc.seen.count
            for src, n in rc.sources.items():
                mine.sources[src] = mine.sources.get(src, 0) + n
    return total


def contribution(
    doc: dict[str, Any], replica: str, base: Shared | None = None, *, decisions: bool = False
) -> Shared:
    """One replica's engine document (`ServiceProfile.to_doc()`) as a `Shared` state.

    The engine's counts include what it was handed (`base`, from the store: every replica's
    sum). Its own counter is therefore engine count minus the other replicas' counts in
    `base`, and never less than its own counter there. People's decisions (tombstones, the
    review) in the document are left out unless `decisions`: in a shared store they come from
    the stored object only (an engine's stale copy must not bring back a cleared tombstone).
    Raises ValueError on a bad document.
    """
    if not isinstance(doc, dict):
        raise ValueError("a profile document must be a mapping")
    dest = doc.get("destination")
    if not isinstance(dest, str) or not dest:
        raise ValueError("a profile document needs a destination")
    others = _others(base, replica)
    own = (base.replicas.get(replica) if base else None) or Counters()
    out = Shared(dest)
    c = Counters()
    c.seen = Seen(
        max(own.seen.count, _int(doc.get("count")) - others.seen.count),
        _float(doc.get("first_seen")),
        _float(doc.get("last_seen")),
    )
    sources = doc.get("sources") or {}
    if isinstance(sources, list):
        sources = {str(s): {} for s in sources}
    if not isinstance(sources, dict):
        raise ValueError("service sources must be a list or a mapping")
    for name, s in sources.items():
        s = s if isinstance(s, dict) else {}
        prev = own.sources.get(name, Seen()).count
        other = others.sources.get(name, Seen()).count
        c.sources[str(name)] = Seen(
            max(prev, _int(s.get("count")) - other),
            _float(s.get("first_seen")),
            _float(s.get("last_seen")),
        )
        out.sources.add(str(name))
    endpoints = doc.get("endpoints") or []
    if not isinstance(endpoints, list):
        raise ValueError("service endpoints must be a list")
    for i, e in enumerate(endpoints):
        if not isinstance(e, dict):
            raise ValueError(f"endpoint {i} must be a mapping")
        try:
            rule = EndpointRule.from_doc(e)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"endpoint {i}: {exc}") from exc
        k = rule_key(rule.method, rule.template)
        prev_r = own.rules.get(k, RuleCounters())
        other_r = others.rules.get(k, RuleCounters())
        rc = RuleCounters(
            Seen(
                max(prev_r.seen.count, rule.seen.count - other_r.seen.count),
                rule.seen.first,
                rule.seen.last,
            )
        )
        for src, n in rule.sources.items():
            rc.sources[src] = max(prev_r.sources.get(src, 0), n - other_r.sources.get(src, 0))
        c.rules[k] = rc
        out.rules[k] = _content(rule, out.rules.get(k), _UNBOUNDED)
    out.replicas[replica] = c
    if decisions:
        out.removed = removed_keys(doc.get("removed"))
        out.review = Review.from_doc(doc.get("review"))
    return out


def rebase(doc: dict[str, Any], replica: str, old: Shared | None, new: Shared) -> dict[str, Any]:
    """A replica's engine document after another writer changed its destination: the new
    shared state joined with what the engine holds beyond `old` (the state it was last handed),
    i.e. its learning not written yet. Tombstones in `new` win; nothing is counted twice (the
    replica's own counter is a max). Raises ValueError on a bad document."""
    return profile_doc(merge(new, contribution(doc, replica, old)))


def profile_doc(s: Shared) -> dict[str, Any]:
    """The merged view as a `ServiceProfile.to_doc()` document: tombstoned rules hidden, counts
    summed over replicas (first seen the earliest, last seen the latest)."""
    total = Seen()
    sources: dict[str, Seen] = {name: Seen() for name in s.sources}
    rule_seen: dict[RuleKey, Seen] = {}
    rule_sources: dict[RuleKey, dict[str, int]] = {}
    for c in s.replicas.values():
        total = _add(total, c.seen)
        for name, seen in c.sources.items():
            sources[name] = _add(sources.get(name, Seen()), seen)
        for k, rc in c.rules.items():
            rule_seen[k] = _add(rule_seen.get(k, Seen()), rc.seen)
            mine = rule_sources.setdefault(k, {})
            for src, n in rc.sources.items():
                mine[src] = mine.get(src, 0) + n
    endpoints = []
    for k in sorted(set(s.rules) | set(s.review.pinned), key=_sort_key):
        rule = pinned_rule(s, k) or s.rules.get(k)
        if k in s.removed or rule is None:
            continue
        doc = rule.to_doc(stats=False)
        counts = rule_sources.get(k, {})
        doc["sources"] = {src: counts.get(src, 0) for src in sorted(rule.sources)}
        seen = rule_seen.get(k, Seen())
        doc.update(count=seen.count, first_seen=round(seen.first, 3), last_seen=round(seen.last, 3))
        endpoints.append(doc)
    out: dict[str, Any] = {
        "destination": s.destination,
        "count": total.count,
        "first_seen": round(total.first, 3),
        "last_seen": round(total.last, 3),
        "sources": {
            n: {"count": v.count, "first_seen": round(v.first, 3), "last_seen": round(v.last, 3)}
            for n, v in sorted(sources.items())
        },
        "endpoints": endpoints,
    }
    if s.removed:
        out["removed"] = [{"method": m, "path": p} for m, p in sorted(s.removed, key=_sort_key)]
    if s.review:
        out["review"] = s.review.to_doc()
    return out


def pinned_rule(s: Shared, key: RuleKey) -> EndpointRule | None:
    """The rule a person wrote for `key` (their edit wins over what was learned), or None."""
    pin = s.review.pinned.get(key)
    if pin is None:
        return None
    try:
        rule = EndpointRule.from_doc(pin[1])
    except (TypeError, ValueError):  # checked when read (from_object) and when written
        return None
    rule.pinned = True
    return rule


def _add(a: Seen, b: Seen) -> Seen:
    j = a.join(b)
    return Seen(a.count + b.count, j.first, j.last)


def _int(v: object) -> int:
    return max(0, int(v or 0))  # type: ignore[call-overload]


def _float(v: object) -> float:
    return max(0.0, float(v or 0))  # type: ignore[arg-type]


# ---- the stored object's spec and status


def to_object(s: Shared) -> dict[str, Any]:
    """{"spec": ..., "status": ...} of the stored object. Status lists are atomic for the API
    server's managedFields (a map keyed by rule would list every key there again)."""
    spec: dict[str, Any] = {
        "destination": s.destination,
        "sources": sorted(s.sources),
        "rules": [s.rules[k].to_doc(stats=False) for k in sorted(s.rules, key=_sort_key)],
        "removed": [{"method": m, "path": p} for m, p in sorted(s.removed, key=_sort_key)],
    }
    if s.review:
        spec["review"] = s.review.to_doc()
    replicas = []
    for rid in sorted(s.replicas):
        c = s.replicas[rid]
        replicas.append(
            {
                "id": rid,
                "seen": c.seen.to_list(),
                "sources": [[n, *v.to_list()] for n, v in sorted(c.sources.items())],
                "rules": [
                    [m, p, *rc.seen.to_list(), dict(sorted(rc.sources.items()))]
                    for (m, p), rc in sorted(c.rules.items(), key=lambda kv: _sort_key(kv[0]))
                ],
            }
        )
    return {"spec": spec, "status": {"replicas": replicas}}


@dataclass
class Parsed:
    """An object read back: its state, plus what could not be parsed (kept verbatim)."""

    shared: Shared
    problems: list[str] = field(default_factory=list)
    bad_rules: list[Any] = field(default_factory=list)  # spec.rules entries left as they were


def from_object(obj: dict[str, Any]) -> Parsed:
    """Read a stored object leniently: a bad rule (a hand edit) is reported and kept aside, the
    others stay. Raises ValueError only when there is no destination at all."""
    spec = _mapping(obj.get("spec"))
    dest = spec.get("destination")
    if not isinstance(dest, str) or not dest:
        raise ValueError("spec.destination is missing")
    out = Parsed(Shared(dest))
    s = out.shared
    for i, e in enumerate(_list(spec, "rules", out)):
        try:
            if not isinstance(e, dict):
                raise ValueError("a rule must be a mapping")
            rule = EndpointRule.from_doc(e)
        except (TypeError, ValueError) as exc:
            out.problems.append(f"spec.rules[{i}]: {exc}")
            out.bad_rules.append(e)
            continue
        k = rule_key(rule.method, rule.template)
        s.rules[k] = _content(rule, s.rules.get(k), _UNBOUNDED)
    for i, e in enumerate(_list(spec, "removed", out)):
        m, p = (e.get("method"), e.get("path")) if isinstance(e, dict) else (None, None)
        if not isinstance(m, str) or not m or not isinstance(p, str) or not p.startswith("/"):
            out.problems.append(f"spec.removed[{i}]: needs a method and a path starting with /")
            continue
        s.removed.add(rule_key(m, p))
    s.sources = {str(x) for x in _list(spec, "sources", out) if isinstance(x, str)}
    try:
        s.review = Review.from_doc(spec.get("review"))
    except ValueError as exc:
        out.problems.append(f"spec.review: {exc}")
    for key in list(s.review.pinned):
        if pinned_rule(s, key) is None:
            out.problems.append(f"spec.review.pinned {key[0]} {key[1]}: not a valid rule")
            del s.review.pinned[key]
    status = _mapping(obj.get("status"))
    for i, r in enumerate(_list(status, "replicas", out)):
        try:
            rid, c = _counters(r)
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            out.problems.append(f"status.replicas[{i}]: {exc}")
            continue
        s.replicas[rid] = _join_counters(s.replicas.get(rid), c, set(s.rules), s.sources)
    return out


_UNBOUNDED = Limits(
    max_endpoints=1 << 30,
    max_sources=1 << 30,
    max_params=1 << 30,
    max_body_fields=1 << 30,
    max_content_types=1 << 30,
)


def _mapping(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(d: dict[str, Any], key: str, out: Parsed) -> list[Any]:
    v = d.get(key) or []
    if not isinstance(v, list):
        out.problems.append(f"{key} must be a list")
        return []
    return v


def _counters(r: object) -> tuple[str, Counters]:
    if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not r["id"]:
        raise ValueError("a replica entry needs an id")
    c = Counters(Seen.from_list(r.get("seen") or [0, 0, 0]))
    for e in r.get("sources") or []:
        c.sources[str(e[0])] = Seen.from_list(list(e[1:]))
    for e in r.get("rules") or []:
        src = e[5] if len(e) > 5 and isinstance(e[5], dict) else {}
        c.rules[rule_key(str(e[0]), str(e[1]))] = RuleCounters(
            Seen.from_list(list(e[2:5])), {str(k): max(0, int(v)) for k, v in src.items()}
        )
    return r["id"], c
