"""Learning from and scoring against a service profile: both read the same request features.

Pure functions: a profile and an Observation in, reasons (or an updated profile) out.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshward.core import reasons as r
from meshward.core import values
from meshward.core.allowlist import EndpointRule, ServiceProfile
from meshward.core.bodies import DecodedBody, decode_body, parse_query
from meshward.core.observation import Observation, Threat
from meshward.core.threats.names import EXCHANGE_MISMATCH

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
    if rule.pinned:  # a person's edit: counted, never widened by learning
        if source in rule.sources:
            rule.sources[source] += 1
        return rule
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
        return [r.UNKNOWN_DESTINATION], None
    reasons: list[str] = []
    source = obs.source.key
    if source not in profile.sources:
        reasons.append(r.UNKNOWN_SOURCE)
    m = profile.match(obs.method, obs.path)
    rule = m.rule
    if rule is None:
        if obs.grpc_service:
            reasons.append(r.UNKNOWN_GRPC_METHOD)
        else:
            reasons.append(r.UNKNOWN_METHOD if m.path_known else r.UNKNOWN_PATH)
        return reasons, None
    if (
        r.UNKNOWN_SOURCE not in reasons
        and source not in rule.sources
        and rule.seen.count >= MIN_CALLS_FOR_CALLER_CHECK
        and rule.sources
    ):
        reasons.append(r.NEW_CALLER_FOR_ENDPOINT)
    if rule.path_value_deviates(obs.path):
        reasons.append(r.PATH_VALUE_CLASS)
    if f.query and not rule.open_query:
        for name, value in f.query:
            classes = rule.query.get(name)
            if classes is None:
                _add(reasons, r.NEW_QUERY_PARAM)
            elif not values.covered(values.classify(value), classes):
                _add(reasons, r.QUERY_VALUE_CLASS)
    if f.content_type and rule.content_types and f.content_type not in rule.content_types:
        reasons.append(r.UNKNOWN_CONTENT_TYPE)
    kind = f.body.kind
    if kind != "empty" and rule.body_kinds and kind not in rule.body_kinds:
        reasons.append(r.BODY_TYPE_MISMATCH)
    elif f.body.shape() and not rule.open_body:
        typed = f.body.typed()  # numbers and booleans: a text field does not take `true`
        for path, cls in f.body.leaf_classes():
            classes = rule.body.get(path)
            if classes is None:
                _add(reasons, r.NEW_BODY_FIELD)
            elif not (
                values.covered_strictly(cls, classes)
                if typed and (path, cls) in typed
                else values.covered(cls, classes)
            ):
                _add(reasons, r.BODY_TYPE_MISMATCH)
    if not rule.size_ok(f.size):
        reasons.append(r.SIZE_OUT_OF_BAND)
    if f.status_class and rule.statuses and f.status_class not in rule.statuses:
        reasons.append(r.UNUSUAL_STATUS)
    return reasons, rule


def flags(threats: list[Threat], failed: bool) -> list[str]:
    """Reasons that do not come from the profile: a mismatch the both-ends join found (the
    source's Exchange.Mismatch threat), a failure of the threat detectors."""
    out = []
    if any(t.name == EXCHANGE_MISMATCH for t in threats):
        out.append(r.BOTH_ENDS_MISMATCH)
    if failed:
        out.append(r.INSPECTION_FAILED)
    return out


def _add(reasons: list[str], code: str) -> None:
    if code not in reasons:
        reasons.append(code)


def combine(reasons: list[str], threats: int) -> float:
    """Score in [0, 1] from reason weights and the number of threats."""
    keep = 1.0
    for code in reasons:
        keep *= 1.0 - r.WEIGHTS.get(code, r.UNLISTED_WEIGHT)
    if threats:
        keep *= (1.0 - r.THREAT_WEIGHT) ** min(threats, 3)
    return 1.0 - keep
