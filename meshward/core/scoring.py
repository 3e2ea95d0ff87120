"""Learning from and scoring against a service profile: both read the same request features.

Pure functions: a profile and an Observation in, reasons (or an updated profile) out.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshward.core import values
from meshward.core.allowlist import EndpointRule, ServiceProfile
from meshward.core.bodies import DecodedBody, decode_body, parse_query
from meshward.core.observation import Observation

# reason code -> weight; a request's score is 1 - prod(1 - weight) over its reasons
WEIGHTS: dict[str, float] = {
    "unknown-destination": 0.6,
    "unknown-source": 0.6,
    "unknown-path": 0.6,
    "unknown-method": 0.6,
    "unknown-grpc-method": 0.6,
    "new-query-param": 0.5,
    "query-value-class": 0.35,
    "new-body-field": 0.5,
    "body-type-mismatch": 0.5,
    "unknown-content-type": 0.3,
    "new-caller-for-endpoint": 0.3,
    "size-out-of-band": 0.25,
    "unusual-status": 0.2,
    "both-ends-mismatch": 0.5,
    "inspection-failed": 0.6,  # the threat detectors raised: enforce denies, monitor alerts
}
INSPECTION_FAILED = "inspection-failed"
THREAT_WEIGHT = 0.95
# an endpoint must have been seen this often before a caller new to it is worth a reason
MIN_CALLS_FOR_CALLER_CHECK = 20


@dataclass(slots=True)
class Features:
    """What learning and scoring read from one request, decoded once."""

    query: list[tuple[str, str]]
    body: DecodedBody
    content_type: str
    size: int
    status_class: str


def features(obs: Observation, max_body: int = 1 << 20) -> Features:
    query, _ = parse_query(obs.query) if obs.query else ([], False)
    ctype = obs.header("content-type")
    body = decode_body(ctype, obs.body, max_bytes=max_body)
    size = obs.body_size if obs.body_size is not None else len(obs.body)
    status = f"{obs.status // 100}xx" if obs.status and 100 <= obs.status < 600 else ""
    return Features(query, body, ctype.split(";", 1)[0].strip().lower(), size, status)


def learn(profile: ServiceProfile, obs: Observation, f: Features) -> EndpointRule | None:
    """Extend a profile with one request (learn mode)."""
    now = obs.time
    source = obs.source.key
    profile.seen.hit(now)
    profile.learn_source(source, now)
    rule = profile.endpoint_for_learning(obs.method, obs.path)
    if rule is None:
        return None
    limits = profile.limits
    rule.seen.hit(now)
    if source in rule.sources or len(rule.sources) < limits.max_sources:
        rule.sources[source] = rule.sources.get(source, 0) + 1
    for name, value in f.query:
        _learn_field(rule, rule.query, name, values.classify(value), limits.max_params)
    ctypes = rule.content_types
    if f.content_type and f.content_type not in ctypes and len(ctypes) < limits.max_content_types:
        ctypes.add(f.content_type)
    rule.body_kinds.add(f.body.kind)
    for path, cls in f.body.leaf_classes():
        _learn_field(rule, rule.body, path, cls, limits.max_body_fields)
    rule.learn_size(f.size)
    if f.status_class:
        rule.statuses.add(f.status_class)
    return rule


def _learn_field(
    rule: EndpointRule, table: dict[str, set[str]], name: str, cls: str, limit: int
) -> None:
    classes = table.get(name)
    if classes is None:
        if len(table) >= limit:
            rule.dropped += 1
            return
        table[name] = {cls}
    elif cls not in classes:
        classes.add(cls)
        if len(classes) > 6:
            table[name] = values.widen(classes)


def score_reasons(
    profile: ServiceProfile | None, obs: Observation, f: Features
) -> tuple[list[str], EndpointRule | None]:
    """The deviations of one request from what its destination's profile allows."""
    if profile is None:
        return ["unknown-destination"], None
    reasons: list[str] = []
    source = obs.source.key
    if source not in profile.sources:
        reasons.append("unknown-source")
    m = profile.match(obs.method, obs.path)
    rule = m.rule
    if rule is None:
        if obs.grpc_service:
            reasons.append("unknown-grpc-method")
        else:
            reasons.append("unknown-method" if m.path_known else "unknown-path")
        return reasons, None
    if (
        "unknown-source" not in reasons
        and source not in rule.sources
        and rule.seen.count >= MIN_CALLS_FOR_CALLER_CHECK
        and rule.sources
    ):
        reasons.append("new-caller-for-endpoint")
    if f.query and not rule.open_query:
        for name, value in f.query:
            classes = rule.query.get(name)
            if classes is None:
                _add(reasons, "new-query-param")
            elif not values.covered(values.classify(value), classes):
                _add(reasons, "query-value-class")
    if f.content_type and rule.content_types and f.content_type not in rule.content_types:
        reasons.append("unknown-content-type")
    kind = f.body.kind
    if kind != "empty" and rule.body_kinds and kind not in rule.body_kinds:
        reasons.append("body-type-mismatch")
    elif f.body.shape() and not rule.open_body:
        for path, cls in f.body.leaf_classes():
            classes = rule.body.get(path)
            if classes is None:
                _add(reasons, "new-body-field")
            elif not values.covered(cls, classes):
                _add(reasons, "body-type-mismatch")
    if not rule.size_ok(f.size):
        reasons.append("size-out-of-band")
    if f.status_class and rule.statuses and f.status_class not in rule.statuses:
        reasons.append("unusual-status")
    return reasons, rule


def _add(reasons: list[str], code: str) -> None:
    if code not in reasons:
        reasons.append(code)


def combine(reasons: list[str], threats: int) -> float:
    """Score in [0, 1] from reason weights and the number of threats."""
    keep = 1.0
    for r in reasons:
        keep *= 1.0 - WEIGHTS.get(r, 0.3)
    if threats:
        keep *= (1.0 - THREAT_WEIGHT) ** min(threats, 3)
    return 1.0 - keep
