"""Learned L7 allowlists: per destination service, a path trie of endpoint rules.

The trie is the compiled index: matching walks it segment by segment, so its cost follows the
path depth, not the number of rules. Learning inserts into the same trie, so what is learned is
matchable at once. Every structure is bounded (sources, parameters, body fields, endpoints) so
hostile or high-cardinality traffic cannot grow memory without limit; what a bound drops is
counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshward.core import redact, templates, values
from meshward.core.pathvalues import PathShape, join_shapes
from meshward.core.reviewstate import Review, RuleKey

# told (what, destination) when a cap turns learning away
Refused = Callable[[str, str], None]
# told (index, error) of a rule a lenient read drops (a stored profile from an older version)
BadRule = Callable[[int, str], None]


def _ignore(what: str, destination: str) -> None:
    pass


DOC_VERSION = 1


@dataclass
class Limits:
    """Bounds on what one service profile, and the allowlist, may hold."""

    cardinality_k: int = 16  # distinct literals at one position before it becomes {str}
    max_endpoints: int = 2000
    max_sources: int = 1024
    # profiles learning may create (stored and imported ones all load): about 5 KB each, so
    # the default bounds what any flood of new destinations can cost to about 10 MB
    max_destinations: int = 2000
    max_params: int = 128  # query parameters per endpoint
    max_body_fields: int = 512
    max_content_types: int = 16
    max_depth: int = 32  # path segments considered


@dataclass
class Seen:
    """Counts and first/last seen times of one learned thing."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0

    def hit(self, now: float, n: int = 1) -> None:
        if not self.count or now < self.first:
            self.first = now
        self.last = max(self.last, now)
        self.count += n

    def merge(self, other: Seen) -> None:
        if other.count:
            if not self.count or other.first < self.first:
                self.first = other.first
            self.last = max(self.last, other.last)
            self.count += other.count


def size_band(n: int) -> int:
    """Log2 band of a body size: sizes within a band (and its neighbours) are alike."""
    return n.bit_length()


@dataclass
class EndpointRule:
    """One allowed method on one path template, with what its requests look like."""

    method: str
    template: str
    seen: Seen = field(default_factory=Seen)
    sources: dict[str, int] = field(default_factory=dict)
    query: dict[str, set[str]] = field(default_factory=dict)  # param -> value classes
    content_types: set[str] = field(default_factory=set)
    body_kinds: set[str] = field(default_factory=set)  # json, form, empty, ...
    body: dict[str, set[str]] = field(default_factory=dict)  # key path -> value classes
    size_min: int = -1  # smallest and largest size band seen (-1: none yet)
    size_max: int = -1
    statuses: set[str] = field(default_factory=set)  # 2xx, 4xx, ...
    open_query: bool = False  # human-widened: any parameter accepted
    open_body: bool = False  # human-widened: any body field accepted
    # template position of a `{str}` -> the shape of the values it took (pathvalues.py)
    path_values: dict[int, PathShape] = field(default_factory=dict)
    dropped: int = 0  # learning increments a bound refused
    pinned: bool = False  # a person's edit: learning counts it, never changes what it allows

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"

    def learn_size(self, size: int) -> None:
        band = size_band(size)
        if self.size_min < 0 or band < self.size_min:
            self.size_min = band
        self.size_max = max(self.size_max, band)

    def size_ok(self, size: int) -> bool:
        if self.size_min < 0:
            return True
        band = size_band(size)
        return self.size_min - 1 <= band <= self.size_max + 1

    def merge(self, other: EndpointRule, limits: Limits) -> None:
        self.seen.merge(other.seen)
        for k, v in other.sources.items():
            if k in self.sources or len(self.sources) < limits.max_sources:
                self.sources[k] = self.sources.get(k, 0) + v
        _merge_fields(self.query, other.query, limits.max_params)
        _merge_fields(self.body, other.body, limits.max_body_fields)
        self.content_types |= other.content_types
        self.body_kinds |= other.body_kinds
        if other.size_min >= 0:
            low = other.size_min if self.size_min < 0 else min(self.size_min, other.size_min)
            self.size_min = low
            self.size_max = max(self.size_max, other.size_max)
        self.statuses |= other.statuses
        self.open_query |= other.open_query
        self.open_body |= other.open_body
        self.path_values = join_shapes(self.path_values, other.path_values)

    def path_value_deviates(self, path: str) -> bool:
        """Does a segment at a learned `{str}` position fall outside the shape it learned?"""
        if not self.path_values:
            return False
        segments = templates.split_path(path)
        for pos, shape in self.path_values.items():
            if pos < len(segments) and not shape.accepts(segments[pos]):
                return True
        return False

    def to_doc(self, stats: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {"method": self.method, "path": self.template}
        if self.query or self.open_query:
            doc["query"] = {k: sorted(v) for k, v in sorted(self.query.items())}
            if self.open_query:
                doc["query"]["*"] = [values.ANY]
        if self.content_types:
            doc["content_types"] = sorted(self.content_types)
        if self.body_kinds:
            doc["body_kinds"] = sorted(self.body_kinds)
        if self.body or self.open_body:
            doc["body"] = {k: sorted(v) for k, v in sorted(self.body.items())}
            if self.open_body:
                doc["body"]["*"] = [values.ANY]
        if self.size_min >= 0:
            doc["size"] = {"min": _band_floor(self.size_min), "max": _band_ceiling(self.size_max)}
        if self.statuses:
            doc["statuses"] = sorted(self.statuses)
        if self.path_values:
            doc["path_values"] = {str(k): v.to_doc() for k, v in sorted(self.path_values.items())}
        if self.pinned:
            doc["pinned"] = True
        if stats:
            doc["sources"] = dict(sorted(self.sources.items()))
            doc["count"] = self.seen.count
            doc["first_seen"] = round(self.seen.first, 3)
            doc["last_seen"] = round(self.seen.last, 3)
        else:
            doc["sources"] = sorted(self.sources)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EndpointRule:
        method = _str(doc, "method").upper()
        template = _str(doc, "path")
        templates.parse(template)
        rule = cls(method=method, template=template)
        query = _mapping(doc, "query")
        rule.open_query = "*" in query
        rule.query = {k: _classes(v, f"query {k}") for k, v in query.items() if k != "*"}
        body = _mapping(doc, "body")
        rule.open_body = "*" in body
        rule.body = {k: _classes(v, f"body {k}") for k, v in body.items() if k != "*"}
        rule.content_types = set(_strings(doc, "content_types"))
        rule.body_kinds = set(_strings(doc, "body_kinds"))
        size = _mapping(doc, "size")
        if size:
            rule.size_min = size_band(int(size.get("min", 0)))
            rule.size_max = size_band(int(size.get("max", 0)))
        rule.statuses = set(_strings(doc, "statuses"))
        rule.path_values = _path_values(doc, template)
        rule.pinned = doc.get("pinned") is True
        sources = doc.get("sources", {})
        if isinstance(sources, list):
            sources = {str(s): 0 for s in sources}
        if not isinstance(sources, dict):
            raise ValueError("rule sources must be a list or a mapping")
        rule.sources = {str(k): int(v or 0) for k, v in sources.items()}
        rule.seen = Seen(
            int(doc.get("count", 0) or 0),
            float(doc.get("first_seen", 0) or 0),
            float(doc.get("last_seen", 0) or 0),
        )
        return rule


def _path_values(doc: dict[str, Any], template: str) -> dict[int, PathShape]:
    """The learned shapes of the template's `{str}` positions; a position without one (a
    person wrote `{str}`) accepts any value."""
    given = _mapping(doc, "path_values")
    strs = [i for i, s in enumerate(templates.split_path(template)) if s == templates.STR]
    out: dict[int, PathShape] = {}
    for key, shape in given.items():
        pos = int(key) if isinstance(key, str) and key.isdigit() else -1
        if pos not in strs:
            raise ValueError(f"path_values {key!r}: not a {{str}} position of {template!r}")
        try:
            out[pos] = PathShape.from_doc(shape)
        except ValueError as exc:
            raise ValueError(f"path_values {key!r}: {exc}") from exc
    for pos in strs:
        out.setdefault(pos, PathShape.opened())
    return out


def _seen_doc(s: Seen) -> dict[str, Any]:
    return {"count": s.count, "first_seen": round(s.first, 3), "last_seen": round(s.last, 3)}


def _band_floor(band: int) -> int:
    return 0 if band <= 0 else 1 << (band - 1)


def _band_ceiling(band: int) -> int:
    return 0 if band <= 0 else (1 << band) - 1


def _merge_fields(into: dict[str, set[str]], other: dict[str, set[str]], limit: int) -> None:
    for k, v in other.items():
        if k in into:
            into[k] = values.widen(into[k] | v)
        elif len(into) < limit:
            into[k] = set(v)


def _str(doc: dict[str, Any], key: str) -> str:
    v = doc.get(key)
    if not isinstance(v, str) or not v:
        raise ValueError(f"rule needs a non-empty string {key!r}")
    return v


def _mapping(doc: dict[str, Any], key: str) -> dict[str, Any]:
    v = doc.get(key) or {}
    if not isinstance(v, dict):
        raise ValueError(f"{key!r} must be a mapping")
    return v


def _strings(doc: dict[str, Any], key: str) -> list[str]:
    v = doc.get(key) or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{key!r} must be a list of strings")
    return v


def _classes(v: object, what: str) -> set[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ValueError(f"{what}: value classes must be a non-empty list")
    v = [values.OLD_NAMES.get(c, c) if isinstance(c, str) else c for c in v]
    bad = [c for c in v if c not in values.ALL_CLASSES]
    if bad:
        known = ", ".join(sorted(values.ALL_CLASSES))
        raise ValueError(f"{what}: unknown value class {bad[0]!r} (known: {known})")
    return set(v)


def old_class_names(doc: object) -> set[str]:
    """The value class names of a document that are the old spellings (`integer` for `int`):
    read all the same, and worth a note to whoever saved it."""
    found: set[str] = set()
    services = doc.get("services") if isinstance(doc, dict) else None
    for svc in services if isinstance(services, list) else []:
        endpoints = svc.get("endpoints") if isinstance(svc, dict) else None
        for rule in endpoints if isinstance(endpoints, list) else []:
            for part in ("query", "body"):
                fields = rule.get(part) if isinstance(rule, dict) else None
                for v in fields.values() if isinstance(fields, dict) else []:
                    names = v if isinstance(v, list) else [v]
                    found.update(c for c in names if isinstance(c, str) and c in values.OLD_NAMES)
    return found


class PathNode:
    """One position of the path trie: literal children, variable children, rules ending here."""

    __slots__ = ("literals", "rules", "variables")

    def __init__(self) -> None:
        self.literals: dict[str, PathNode] = {}
        self.variables: dict[str, PathNode] = {}
        self.rules: dict[str, EndpointRule] = {}  # method -> rule

    def merge(self, other: PathNode, limits: Limits) -> None:
        """Fold another subtree into this one (used when a position becomes a variable)."""
        for method, rule in other.rules.items():
            mine = self.rules.get(method)
            if mine is None:
                self.rules[method] = rule
            else:
                mine.merge(rule, limits)
        for name, child in other.literals.items():
            if name in self.literals:
                self.literals[name].merge(child, limits)
            else:
                self.literals[name] = child
        for name, child in other.variables.items():
            if name in self.variables:
                self.variables[name].merge(child, limits)
            else:
                self.variables[name] = child


@dataclass
class Match:
    """Where a request landed in a profile."""

    rule: EndpointRule | None  # the rule for the path and method
    path_known: bool  # some rule has this path (perhaps for another method)


class ServiceProfile:
    """Everything learned about one destination service."""

    def __init__(
        self, destination: str, limits: Limits | None = None, on_refuse: Refused | None = None
    ) -> None:
        self.destination = destination
        self.limits = limits or Limits()
        self.seen = Seen()
        self.sources: dict[str, Seen] = {}
        self.root = PathNode()
        self.endpoints = 0
        self.dropped = 0
        self.on_refuse = on_refuse or _ignore
        # rules a person removed (method, template): never learned again (docs/review.md)
        self.removed: set[RuleKey] = set()
        self.review = Review()  # the review mark, approvals, who removed what

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (between serve and its ingest worker: much cheaper than `to_doc` and
        `from_doc` for a big profile) without the refusal hook: the receiver sets its own."""
        state = self.__dict__.copy()
        del state["on_refuse"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.on_refuse = _ignore

    def is_empty(self) -> bool:
        """Nothing learned, removed or reviewed yet (as `Allowlist.learnable` creates it)."""
        return not (
            self.seen.count or self.sources or self.endpoints or self.removed or self.review
        )

    # ---- learning
    def learn_source(self, source: str, now: float) -> None:
        s = self.sources.get(source)
        if s is None:
            if len(self.sources) >= self.limits.max_sources:
                self.dropped += 1
                self.on_refuse("source-cap", self.destination)
                return
            s = self.sources[source] = Seen()
        s.hit(now)

    def endpoint_for_learning(self, method: str, path: str) -> EndpointRule | None:
        """The rule a request teaches, created (and the trie generalised) as needed."""
        if not method:  # the stored document of a rule needs a method: no profile would load
            return None
        if "{" in path or "}" in path:
            # never a literal: a learned `/admin/{any}` would read back from the stored
            # document as the variable and allow all of /admin
            self.dropped += 1
            self.on_refuse("brace-in-path", self.destination)
            return None
        node = self.root
        segments = templates.split_path(path)
        template: list[str] = []
        deep = len(segments) > self.limits.max_depth
        for seg in segments[: self.limits.max_depth - 1] if deep else segments:
            node, name = self._step_learn(node, seg, len(template))
            template.append(name)
        if deep:  # beyond the depth bound the rest of the path is one wildcard
            node = node.variables.setdefault(templates.REST, PathNode())
            template.append(templates.REST)
        rule = node.rules.get(method)
        if rule is None:
            if (method, templates.join_path(template)) in self.removed:
                self.on_refuse("removed-rule", self.destination)
                return None
            if self.endpoints >= self.limits.max_endpoints:
                self.dropped += 1
                self.on_refuse("endpoint-cap", self.destination)
                return None
            rule = node.rules[method] = EndpointRule(method, templates.join_path(template))
            self.endpoints += 1
        for pos, name in enumerate(template):
            if name == templates.STR and not rule.pinned:
                shape = rule.path_values.get(pos)
                if shape is None:
                    shape = rule.path_values[pos] = PathShape()
                shape.learn(segments[pos])
        return rule

    def _step_learn(self, node: PathNode, seg: str, depth: int) -> tuple[PathNode, str]:
        if seg in node.literals:
            return node.literals[seg], seg
        var = templates.segment_variable(seg)
        if var is not None:
            child = node.variables.get(var)
            if child is None:
                child = node.variables[var] = PathNode()
            return child, var
        for name in (templates.STR, templates.REST):
            if name in node.variables:
                return node.variables[name], name
        if len(node.literals) >= self.limits.cardinality_k:
            return self._generalise(node, depth), templates.STR
        if redact.secret_segment(seg):  # a credential in a path is never stored as a literal
            return node.variables.setdefault(templates.STR, PathNode()), templates.STR
        child = node.literals[seg] = PathNode()
        return child, seg

    def _generalise(self, node: PathNode, depth: int) -> PathNode:
        """Too many literals at this position: fold them all into one `{str}` variable, each
        rule under them keeping the shape of the literal it was learned under."""
        target = node.variables.get(templates.STR) or PathNode()
        for literal, child in node.literals.items():
            for rule in _rules_under(child):
                rule.path_values.setdefault(depth, PathShape()).learn(literal)
            target.merge(child, self.limits)
        node.literals.clear()
        node.variables[templates.STR] = target
        self.retemplate()
        return target

    def retemplate(self) -> None:
        """Recompute rule templates and the endpoint count from the trie (after merges)."""
        count = 0
        stack: list[tuple[PathNode, list[str]]] = [(self.root, [])]
        while stack:
            node, prefix = stack.pop()
            for rule in node.rules.values():
                rule.template = templates.join_path(prefix)
                count += 1
            for name, child in node.literals.items():
                stack.append((child, [*prefix, name]))
            for name, child in node.variables.items():
                stack.append((child, [*prefix, name]))
        self.endpoints = count

    # ---- matching
    def match(self, method: str, path: str) -> Match:
        segments = templates.split_path(path)
        found = _walk(self.root, segments, 0, method)
        if found is None:
            return Match(None, False)
        node = found
        rule = node.rules.get(method)
        if rule is None and method == "HEAD":
            rule = node.rules.get("GET")  # HEAD is GET without a body
        return Match(rule, True)

    def rules(self) -> list[EndpointRule]:
        out: list[EndpointRule] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            out.extend(node.rules.values())
            stack.extend(node.literals.values())
            stack.extend(node.variables.values())
        return sorted(out, key=lambda r: (r.template, r.method))

    def add_rule(self, rule: EndpointRule) -> None:
        """Insert a (human-written or imported) rule at its template, merging with any there."""
        node = self.root
        for seg in templates.split_path(rule.template):
            table = node.variables if templates.is_variable(seg) else node.literals
            child = table.get(seg)
            if child is None:
                child = table[seg] = PathNode()
            node = child
        mine = node.rules.get(rule.method)
        if mine is None:
            node.rules[rule.method] = rule
            self.endpoints += 1
        else:
            mine.merge(rule, self.limits)

    def remove_rule(self, method: str, template: str) -> bool:
        node = self.root
        for seg in templates.split_path(template):
            table = node.variables if templates.is_variable(seg) else node.literals
            node = table.get(seg)  # type: ignore[assignment]
            if node is None:
                return False
        if node.rules.pop(method.upper(), None) is None:
            return False
        self.endpoints -= 1
        return True

    # ---- documents
    def to_doc(self, stats: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {"destination": self.destination}
        if stats:
            doc["count"] = self.seen.count
            doc["first_seen"] = round(self.seen.first, 3)
            doc["last_seen"] = round(self.seen.last, 3)
            doc["sources"] = {k: _seen_doc(s) for k, s in sorted(self.sources.items())}
        else:
            doc["sources"] = sorted(self.sources)
        doc["endpoints"] = [r.to_doc(stats) for r in self.rules()]
        if self.removed:
            doc["removed"] = [{"method": m, "path": p} for m, p in sorted(self.removed)]
        if self.review:
            doc["review"] = self.review.to_doc()
        return doc

    @classmethod
    def from_doc(
        cls, doc: dict[str, Any], limits: Limits | None = None, bad_rule: BadRule | None = None
    ) -> ServiceProfile:
        """A profile from its document. A bad rule fails the whole document (an import is
        all-or-nothing), unless `bad_rule` is given: then that rule alone is dropped and
        `bad_rule(index, error)` told (a stored profile must not be lost for one old rule)."""
        if not isinstance(doc, dict):
            raise ValueError("a service must be a mapping")
        profile = cls(_str(doc, "destination"), limits)
        profile.seen = Seen(
            int(doc.get("count", 0) or 0),
            float(doc.get("first_seen", 0) or 0),
            float(doc.get("last_seen", 0) or 0),
        )
        sources = doc.get("sources") or {}
        if isinstance(sources, list):
            sources = {str(s): {} for s in sources}
        if not isinstance(sources, dict):
            raise ValueError("service sources must be a list or a mapping")
        for name, s in sources.items():
            s = s if isinstance(s, dict) else {}
            profile.sources[str(name)] = Seen(
                int(s.get("count", 0) or 0),
                float(s.get("first_seen", 0) or 0),
                float(s.get("last_seen", 0) or 0),
            )
        endpoints = doc.get("endpoints") or []
        if not isinstance(endpoints, list):
            raise ValueError("service endpoints must be a list")
        for i, e in enumerate(endpoints):
            try:
                if not isinstance(e, dict):
                    raise ValueError("must be a mapping")
                rule = EndpointRule.from_doc(e)
            except (TypeError, ValueError) as exc:
                if bad_rule is None:
                    raise ValueError(f"endpoint {i}: {exc}") from exc
                bad_rule(i, str(exc))
                continue
            profile.add_rule(rule)
        profile.removed = removed_keys(doc.get("removed"))
        profile.review = Review.from_doc(doc.get("review"))
        return profile

    def merge(self, other: ServiceProfile) -> None:
        self.seen.merge(other.seen)
        for k, s in other.sources.items():
            self.sources.setdefault(k, Seen()).merge(s)
        for rule in other.rules():
            self.add_rule(rule)
        self.removed |= other.removed
        self.review = self.review.join(other.review)


def removed_keys(entries: object) -> set[RuleKey]:
    """The tombstones of a document: `[{"method", "path"}]`."""
    if entries is None:
        return set()
    if not isinstance(entries, list):
        raise ValueError("'removed' must be a list")
    out: set[RuleKey] = set()
    for i, e in enumerate(entries):
        m, p = (e.get("method"), e.get("path")) if isinstance(e, dict) else (None, None)
        if not isinstance(m, str) or not m or not isinstance(p, str) or not p.startswith("/"):
            raise ValueError(f"removed[{i}]: needs a method and a path starting with /")
        out.add((m.upper(), p))
    return out


def _rules_under(node: PathNode) -> list[EndpointRule]:
    out: list[EndpointRule] = []
    stack = [node]
    while stack:
        n = stack.pop()
        out.extend(n.rules.values())
        stack.extend(n.literals.values())
        stack.extend(n.variables.values())
    return out


def _walk(node: PathNode, segs: list[str], i: int, method: str) -> PathNode | None:
    """Depth-first match: literals before typed variables before `{str}`; `{any}` ends it.

    Returns the first node whose rules hold `method`, else the first node with any rule.
    """
    if i == len(segs):
        return node if node.rules else None
    seg = segs[i]
    fallback: PathNode | None = None
    child = node.literals.get(seg)
    if child is not None:
        found = _walk(child, segs, i + 1, method)
        if found is not None:
            if method in found.rules:
                return found
            fallback = found
    for name, child in node.variables.items():
        if name == templates.REST:
            if child.rules and seg:
                if method in child.rules:
                    return child
                fallback = fallback or child
            continue
        if templates.variable_accepts(name, seg):
            found = _walk(child, segs, i + 1, method)
            if found is not None:
                if method in found.rules:
                    return found
                fallback = fallback or found
    return fallback


class Allowlist:
    """All service profiles, keyed by destination identity."""

    def __init__(self, limits: Limits | None = None, on_refuse: Refused | None = None) -> None:
        """`on_refuse(what, destination)` hears of every cap that turned learning away
        (destination-cap, source-cap, endpoint-cap, brace-in-path): the engine counts and logs
        them."""
        self.limits = limits or Limits()
        self.services: dict[str, ServiceProfile] = {}
        self.on_refuse = on_refuse or _ignore

    def get(self, destination: str) -> ServiceProfile | None:
        return self.services.get(destination)

    def has_room(self) -> bool:
        """Whether learning may create another profile (`max_destinations`)."""
        return len(self.services) < self.limits.max_destinations

    def learnable(self, destination: str) -> ServiceProfile | None:
        """The profile learning extends, created while under `max_destinations`; None past it
        (refused: one caller inventing destinations cannot grow memory without bound)."""
        p = self.services.get(destination)
        if p is None:
            if not self.has_room():
                self.on_refuse("destination-cap", destination)
                return None
            p = self.services[destination] = ServiceProfile(
                destination, self.limits, self.on_refuse
            )
        return p

    def profile(self, destination: str) -> ServiceProfile:
        p = self.services.get(destination)
        if p is None:
            p = self.services[destination] = ServiceProfile(
                destination, self.limits, self.on_refuse
            )
        return p

    def rule_count(self) -> int:
        return sum(p.endpoints for p in self.services.values())

    def export_doc(self, stats: bool = True) -> dict[str, Any]:
        """The reviewable, diffable form: sorted services, sorted rules."""
        return {
            "version": DOC_VERSION,
            "services": [self.services[k].to_doc(stats) for k in sorted(self.services)],
        }

    def import_doc(self, doc: object, replace: bool = False) -> list[str]:
        """Load rules a human reviewed or wrote; all-or-nothing. Returns destinations touched."""
        if not isinstance(doc, dict):
            raise ValueError("allowlist document must be a mapping")
        if doc.get("version", DOC_VERSION) != DOC_VERSION:
            raise ValueError(f"unsupported allowlist version {doc.get('version')!r}")
        services = doc.get("services") or []
        if not isinstance(services, list):
            raise ValueError("'services' must be a list")
        parsed = []
        for i, s in enumerate(services):
            try:
                parsed.append(ServiceProfile.from_doc(s, self.limits))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"service {i}: {exc}") from exc
        if replace:
            self.services = {}
        for p in parsed:
            self.add_profile(p)
        return [p.destination for p in parsed]

    def add_profile(self, p: ServiceProfile) -> None:
        """A profile read from a document, merged into any of the same destination."""
        p.on_refuse = self.on_refuse
        if p.destination in self.services:
            self.services[p.destination].merge(p)
        else:
            self.services[p.destination] = p
