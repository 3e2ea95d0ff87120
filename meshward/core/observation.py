"""The one data type that crosses every boundary: the Observation, and what scoring says of it.

Every source (ext_authz, the Envoy tap, the node tap, offline files) turns what it saw into an
Observation; the engine consumes nothing else and answers with a Verdict.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

SeenBy = Literal["extauthz", "envoy-tap", "node-tap", "file"]
VerdictKind = Literal["allow", "alert", "deny"]
# which side of the call the seeing sidecar sits on: inbound the callee's, outbound the caller's
Direction = Literal["inbound", "outbound"]
DIRECTIONS: tuple[Direction, ...] = ("inbound", "outbound")
# how a streaming source's view of the exchange ended: complete, or cut (the stream ended before
# the response), expired (held past the stream timeout), error (an undecodable message)
Outcome = Literal["complete", "cut", "expired", "error"]
OUTCOMES: tuple[Outcome, ...] = ("complete", "cut", "expired", "error")

_SPIFFE = re.compile(r"^spiffe://[^/]+/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")
# Linkerd identities: <sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>
_LINKERD = re.compile(r"^(?P<sa>[^.]+)\.(?P<ns>[^.]+)\.serviceaccount\.identity\.")
# Kubernetes service DNS names: <svc>.<ns>.svc[.cluster.local]
_SVC_DNS = re.compile(r"^(?P<svc>[^.]+)\.(?P<ns>[^.]+)\.svc(\.[^:]*)?(:\d+)?$")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(slots=True)
class Identity:
    """Who one end of an exchange is. Any field may be empty; `key` is what rules are keyed by."""

    namespace: str = ""
    workload: str = ""  # workload, service or service account name
    principal: str = ""  # SPIFFE id or Linkerd identity, as the mesh presented it
    ip: str = ""
    port: int = 0

    @property
    def key(self) -> str:
        """Stable identity string: `namespace/workload`, else principal, else IP, else `unknown`."""
        if self.workload:
            return f"{self.namespace}/{self.workload}" if self.namespace else self.workload
        if self.principal:
            return self.principal
        if self.ip:
            return self.ip
        return "unknown"

    @classmethod
    def parse(cls, text: str, *, ip: str = "", port: int = 0) -> Identity:
        """Read the identity spellings meshes use: SPIFFE, Linkerd, service DNS, `ns/name`."""
        text = text or ""
        parse = _parse_name_memo if len(text) <= 256 else _parse_name
        namespace, workload, principal = parse(text)
        return cls(namespace, workload, principal, ip, port)


def _parse_name(text: str) -> tuple[str, str, str]:
    """(namespace, workload, principal) of one identity spelling."""
    text = text.strip()
    if not text or text == "unknown":
        return "", "", ""
    if m := _SPIFFE.match(text):
        return m["ns"], m["sa"], text
    if m := _LINKERD.match(text):
        return m["ns"], m["sa"], text
    if m := _SVC_DNS.match(text.lower()):
        return m["ns"], m["svc"], ""
    if "/" in text and "://" not in text:
        ns, _, name = text.partition("/")
        return ns, name, ""
    return "", text, ""


# a mesh has few identities and every request names two; bounded in count and length
_parse_name_memo = functools.lru_cache(maxsize=4096)(_parse_name)


@dataclass(slots=True)
class Threat:
    """One embedded attack found in one place of a request (or one network event)."""

    name: str  # dotted, e.g. SQL.Injection; never renamed (docs/detection.md)
    location: str  # e.g. query:id, body:$.user.name, header:cookie:sid, path, network
    evidence: str  # matched fragment, <= 128 chars, control characters escaped

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "location": self.location, "evidence": self.evidence}


@dataclass(slots=True)
class Observation:
    """One L7 exchange (or one network event) as some source saw it."""

    seen_by: SeenBy
    source: Identity = field(default_factory=Identity)
    destination: Identity = field(default_factory=Identity)
    time: float = field(default_factory=time.time)
    protocol: str = "http/1.1"  # http/1.1, h2, grpc; network events: icmp, udp, dns
    method: str = ""
    authority: str = ""
    path: str = "/"  # without the query string, as received (not decoded)
    query: str = ""  # raw query string without the leading '?'
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lower-case, in order
    body: bytes = b""
    body_truncated: bool = False  # the source saw only a prefix of the body
    body_size: int | None = None  # declared size (content-length) when known
    status: int | None = None  # response status when known
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    grpc_service: str = ""
    grpc_method: str = ""
    request_id: str = ""  # x-request-id, joins both ends of one call
    threats: list[Threat] = field(default_factory=list)  # found by the source itself (network)
    direction: Direction | None = None  # set by sidecar sources (the Envoy tap), else unknown
    headers_truncated: bool = False  # the source kept only some of the headers (either list)
    outcome: Outcome = "complete"  # a cut or expired stream is judged but not learned
    # what the source knows that does not fit above (e.g. tcp flow id, envoy node id); never
    # read for a decision
    extra: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str = "") -> str:
        """First value of a header (name lower-case)."""
        for k, v in self.headers:
            if k == name:
                return v
        return default

    @property
    def complete(self) -> bool:
        """The source saw the exchange to its end (a cut view is not learned from)."""
        return self.outcome == "complete"

    @property
    def content_type(self) -> str:
        return self.header("content-type").split(";", 1)[0].strip().lower()

    def fill_grpc(self) -> None:
        """Derive gRPC service and method from the path (`/pkg.Service/Method`) when gRPC."""
        if self.grpc_service or not self.content_type.startswith("application/grpc"):
            return
        self.protocol = "grpc"
        parts = self.path.split("/")
        if len(parts) == 3 and parts[1] and parts[2]:
            self.grpc_service, self.grpc_method = parts[1], parts[2]


@dataclass(slots=True)
class Verdict:
    """What the engine says of one Observation."""

    verdict: VerdictKind
    score: float
    reasons: list[str] = field(default_factory=list)
    threats: list[Threat] = field(default_factory=list)
    rule: str | None = None  # matched rule, e.g. "GET /users/{int}"
    mode: str = "learn"
    destination: str = "unknown"
    source: str = "unknown"
    body_partly_inspected: bool = False

    def as_dict(self) -> dict[str, object]:
        """The JSON Lines object of `meshward score` (docs/offline.md), plus `rule` and `mode`."""
        out: dict[str, object] = {
            "verdict": self.verdict,
            "score": round(self.score, 4),
            "reasons": list(self.reasons),
            "threats": [t.as_dict() for t in self.threats],
            "destination": self.destination,
            "source": self.source,
            "rule": self.rule,
            "mode": self.mode,
        }
        if self.body_partly_inspected:
            out["body_partly_inspected"] = True
        return out


def whole(text: str) -> str:
    """Text with no surrogate code points: pairs joined (as JSON and JavaScript read them), a
    lone half U+FFFD. The json module reads a `\\ud800` escape as a lone half, the detectors'
    decoding of `\\uXXXX` makes halves too, and text holding one cannot be encoded as UTF-8:
    SQLite, Prometheus, libinjection and Hyperscan need it."""
    if text.isascii() or not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


_TEXT_FIELDS = (
    "protocol",
    "method",
    "authority",
    "path",
    "query",
    "grpc_service",
    "grpc_method",
    "request_id",
)


def whole_text(obs: Observation) -> Observation:
    """The Observation with every text field `whole` (in place): for sources that decode JSON
    (the ingest API, HAR and tap files), whose strings may hold lone surrogates."""
    for i in (obs.source, obs.destination):
        for name in ("namespace", "workload", "principal", "ip"):
            setattr(i, name, whole(getattr(i, name)))
    for name in _TEXT_FIELDS:
        setattr(obs, name, whole(getattr(obs, name)))
    obs.headers = [(whole(k), whole(v)) for k, v in obs.headers]
    obs.response_headers = [(whole(k), whole(v)) for k, v in obs.response_headers]
    obs.threats = [Threat(whole(t.name), whole(t.location), whole(t.evidence)) for t in obs.threats]
    obs.extra = {whole(k): whole(v) for k, v in obs.extra.items()}
    return obs


def _identity_from(d: object) -> Identity:
    if not isinstance(d, dict):
        raise ValueError("identity must be an object")
    return Identity(
        namespace=_text(d, "namespace"),
        workload=_text(d, "workload"),
        principal=_text(d, "principal"),
        ip=_text(d, "ip"),
        port=int(d.get("port", 0) or 0),
    )


def _text(d: dict[str, Any], key: str, default: str | None = "") -> str:
    """A text field of the wire form. Not str(): null, numbers and objects would become Python
    reprs ("None", "{'a': 1}") that are then learned as methods, paths and queries."""
    v = d.get(key, default)
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a string, not {type(v).__name__}")
    return v


def observation_to_dict(obs: Observation) -> dict[str, object]:
    """JSON-safe form (body base64) used on the wire between node-tap and serve, and in logs."""
    return {
        "seen_by": obs.seen_by,
        "time": obs.time,
        "source": _identity_dict(obs.source),
        "destination": _identity_dict(obs.destination),
        "protocol": obs.protocol,
        "method": obs.method,
        "authority": obs.authority,
        "path": obs.path,
        "query": obs.query,
        "headers": [list(h) for h in obs.headers],
        "body_b64": base64.b64encode(obs.body).decode("ascii"),
        "body_truncated": obs.body_truncated,
        "body_size": obs.body_size,
        "status": obs.status,
        "response_headers": [list(h) for h in obs.response_headers],
        "grpc_service": obs.grpc_service,
        "grpc_method": obs.grpc_method,
        "request_id": obs.request_id,
        "threats": [t.as_dict() for t in obs.threats],
        "direction": obs.direction,
        "headers_truncated": obs.headers_truncated,
        "outcome": obs.outcome,
        "extra": dict(obs.extra),
    }


def _identity_dict(i: Identity) -> dict[str, object]:
    return {
        "namespace": i.namespace,
        "workload": i.workload,
        "principal": i.principal,
        "ip": i.ip,
        "port": i.port,
    }


def _pairs(v: object) -> list[tuple[str, str]]:
    if not isinstance(v, list):
        raise ValueError("headers must be a list of [name, value] pairs")
    out = []
    for item in v:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ValueError("headers must be a list of [name, value] pairs")
        if not isinstance(item[0], str) or not isinstance(item[1], str):
            raise ValueError("header names and values must be strings")
        out.append((item[0].lower(), item[1]))
    return out


def _typed_fields(
    d: dict[str, Any], extra: dict[str, str]
) -> tuple[Direction | None, bool, Outcome]:
    """direction, headers_truncated and outcome of the wire form. Before they were fields they
    travelled in `extra` (`direction`, `headers_truncated: "true"`, `tap_outcome`): those keys are
    still read (and taken out of extra) so older node taps and saved JSONL keep their meaning."""
    direction = d.get("direction", extra.pop("direction", None)) or None
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    legacy_cut = extra.pop("headers_truncated", "") == "true"
    headers_truncated = bool(d.get("headers_truncated", False)) or legacy_cut
    outcome = d.get("outcome", extra.pop("tap_outcome", "complete")) or "complete"
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    return direction, headers_truncated, outcome


def observation_from_dict(d: object) -> Observation:
    """Inverse of `observation_to_dict`; raises ValueError with a clear message on bad input."""
    if not isinstance(d, dict):
        raise ValueError("observation must be a JSON object")
    seen_by = d.get("seen_by", "file")
    if seen_by not in ("extauthz", "envoy-tap", "node-tap", "file"):
        raise ValueError(f"unknown seen_by {seen_by!r}")
    try:
        body = base64.b64decode(_text(d, "body_b64"), validate=True)
        threats = [
            Threat(_text(t, "name", None), _text(t, "location"), _text(t, "evidence"))
            for t in d.get("threats", []) or []
        ]
        status = d.get("status")
        size = d.get("body_size")
        extra = {str(k): str(v) for k, v in (d.get("extra") or {}).items()}
        direction, headers_truncated, outcome = _typed_fields(d, extra)
        when = float(d.get("time", time.time()))
        if not math.isfinite(when):  # NaN cannot be stored (NOT NULL); inf is not JSON
            raise ValueError(f"time must be a finite number, not {when}")
        obs = Observation(
            seen_by=seen_by,
            time=when,
            source=_identity_from(d.get("source", {})),
            destination=_identity_from(d.get("destination", {})),
            protocol=_text(d, "protocol", "http/1.1"),
            method=_text(d, "method"),
            authority=_text(d, "authority"),
            path=_text(d, "path", "/"),
            query=_text(d, "query"),
            headers=_pairs(d.get("headers", [])),
            body=body,
            body_truncated=bool(d.get("body_truncated", False)),
            body_size=int(size) if size is not None else None,
            status=int(status) if status is not None else None,
            response_headers=_pairs(d.get("response_headers", [])),
            grpc_service=_text(d, "grpc_service"),
            grpc_method=_text(d, "grpc_method"),
            request_id=_text(d, "request_id"),
            threats=threats,
            direction=direction,
            headers_truncated=headers_truncated,
            outcome=outcome,
            extra=extra,
        )
    except (TypeError, KeyError, AttributeError, OverflowError, binascii.Error) as exc:
        raise ValueError(f"malformed observation: {exc}") from exc
    return whole_text(obs)
