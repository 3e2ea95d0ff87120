"""The enforce-readiness report: traffic replayed through the allowlist as if a namespace were
in another mode (enforce, usually), summed up by service and reason (docs/dashboard.md, "Modes
and the enforce-readiness report").

Two pure pieces: `for_replay` makes the copy of an observation serve may keep for a later
replay (secrets gone, their value classes kept, so the replay scores it as the original), and
`Tally` sums up the replayed verdicts. Serve keeps the copies (meshward.app.recent) and runs
the replay (meshward.app.readiness).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

from meshward.core import redact, values
from meshward.core.observation import Observation, Verdict

MAX_KEPT_BODY = 16 * 1024  # bytes of a body a replay copy keeps (JSON and forms only)
MAX_KEPT_VALUE = 256  # characters of one value looked into; a longer one is stood in for
EXAMPLES = 5  # example calls per service in a report
# a value of each class that shows nothing of the value it stands for
_STAND_INS = {
    values.EMPTY: "",
    values.BOOL: "true",
    values.INT: "0",
    values.FLOAT: "0.0",
    values.UUID: "00000000-0000-4000-8000-000000000000",
    values.HEX: "0000000a",
    values.DATE: "2000-01-01",
    values.EMAIL: "redacted@example.invalid",
    values.JWT: "eyJhbGciOiJub25lIn0.eyJyZWRhY3RlZCI6MX0.",
    values.TOKEN: "redactedRedacted0000",
    values.WORD: "redacted",
}


def stand_in(name: str, raw: str, header: bool = False) -> str:
    """`raw` when redaction keeps it, else a value of the same class that says nothing: the
    replay then finds the value class the original had, and no secret is kept. A value longer
    than MAX_KEPT_VALUE is always stood in for (its class is `text`): redaction's cost stays
    bounded per value, whatever a caller sends."""
    if len(raw) <= MAX_KEPT_VALUE:
        shown = redact.header(name, raw) if header else redact.value(name, raw)
        if shown == raw:
            return raw
    return _STAND_INS.get(values.classify(raw), redact.REDACTED)  # "[redacted]": text


def _query(qs: str) -> str:
    if not qs:
        return qs
    pairs = parse_qsl(qs, keep_blank_values=True)
    return "&".join(f"{quote(k, safe='')}={quote(stand_in(k, v), safe='')}" for k, v in pairs)


def _json(value: object, name: str = "") -> object:
    if isinstance(value, dict):
        return {k: _json(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v, name) for v in value]
    if isinstance(value, str):
        return stand_in(name, value)
    if redact.is_secret_name(name) and isinstance(value, int | float):  # a PIN, a card number
        return type(value)(not isinstance(value, bool))
    return value


def _body(obs: Observation) -> bytes | None:
    """A JSON or form body with every secret value stood in for; None: not kept (other
    kinds, too large, unreadable), so nothing unseen by redaction is ever kept."""
    if not obs.body:
        return b""
    if len(obs.body) > MAX_KEPT_BODY or obs.body_truncated:
        return None
    kind = obs.content_type
    try:
        text = obs.body.decode("utf-8")
        if kind == "application/json" or kind.endswith("+json"):
            return json.dumps(_json(json.loads(text)), separators=(",", ":")).encode()
        if kind == "application/x-www-form-urlencoded":
            return _query(text).encode()
    except (ValueError, RecursionError):
        return None
    return None


def for_replay(obs: Observation) -> tuple[Observation, bool]:
    """The copy of `obs` kept for replay, and whether its body was kept. Secrets in the path,
    query, headers and body are gone (redact's policy; query and body values stood in for by
    a value of their class); no response, no request id, no source-specific extras."""
    body = _body(obs)
    return (
        dataclasses.replace(
            obs,
            path=redact.path(obs.path),
            query=_query(obs.query),
            headers=[(n, stand_in(n, v, header=True)) for n, v in obs.headers],
            body=body or b"",
            body_size=obs.body_size if obs.body_size is not None else len(obs.body),
            response_headers=[],
            request_id="",
            extra={},
            threats=list(obs.threats),
        ),
        body is not None,
    )


@dataclass
class _Service:
    calls: int = 0
    denied: int = 0
    alerted: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)


def reasons_of(verdict: Verdict) -> list[str]:
    """The reasons a verdict gives, threats named as `threat:NAME`."""
    return [*verdict.reasons, *(f"threat:{t.name}" for t in verdict.threats)]


@dataclass
class Tally:
    """Replayed verdicts summed up by service and reason (each call weighed by how many calls
    of its shape it stands for)."""

    services: dict[str, _Service] = field(default_factory=dict)
    bodies_not_kept: int = 0

    def add(self, obs: Observation, verdict: Verdict, calls: int = 1) -> None:
        s = self.services.setdefault(verdict.destination, _Service())
        s.calls += calls
        if verdict.verdict == "allow":
            return
        if verdict.verdict == "deny":
            s.denied += calls
        else:
            s.alerted += calls
        why = reasons_of(verdict)
        for r in why:
            s.reasons[r] += calls
        key = (verdict.source, obs.method, redact.path(obs.path))
        ex = s.examples.get(key)
        if ex is None and len(s.examples) < EXAMPLES:
            s.examples[key] = {
                "source": verdict.source,
                "method": obs.method,
                "path": key[2],
                "verdict": verdict.verdict,
                "reasons": why,
                "calls": calls,
            }
        elif ex is not None:
            ex["calls"] += calls

    def report(self) -> dict[str, Any]:
        """{"calls", "would_deny", "would_alert", "reasons": [{reason, calls}], "services":
        [{service, calls, would_deny, would_alert, reasons, examples}]}: the most denied
        service first."""
        total: Counter[str] = Counter()
        out: list[dict[str, Any]] = []
        for name, s in self.services.items():
            total.update(s.reasons)
            out.append(
                {
                    "service": name,
                    "calls": s.calls,
                    "would_deny": s.denied,
                    "would_alert": s.alerted,
                    "reasons": _ranked(s.reasons),
                    "examples": sorted(s.examples.values(), key=lambda e: -e["calls"]),
                }
            )
        out.sort(key=lambda s: (-s["would_deny"], -s["would_alert"], s["service"]))
        return {
            "calls": sum(s.calls for s in self.services.values()),
            "would_deny": sum(s.denied for s in self.services.values()),
            "would_alert": sum(s.alerted for s in self.services.values()),
            "bodies_not_kept": self.bodies_not_kept,
            "reasons": _ranked(total),
            "services": out,
        }


def _ranked(counts: Counter[str]) -> list[dict[str, Any]]:
    return [{"reason": r, "calls": n} for r, n in sorted(counts.items(), key=lambda x: -x[1])]
