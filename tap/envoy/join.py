"""Both ends of one call: join the caller's outbound view and the callee's inbound view.

Envoy propagates `x-request-id`, so both sidecars report the same id. The first view waits in a
bounded, time-limited table; when the other end arrives the two are compared. A difference in
what both must agree on (method, path, query, body) is itself suspicious: something between the
two sidecars changed the request.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from meshward.observation import Observation, Threat

MISMATCH = "Exchange.Mismatch"


def _view(obs: Observation) -> dict[str, Any]:
    return {
        "direction": obs.extra.get("direction", ""),
        "node": obs.extra.get("node", ""),
        "source": obs.source.key,
        "destination": obs.destination.key,
        "method": obs.method,
        "authority": obs.authority,
        "path": obs.path,
        "query": obs.query,
        "status": obs.status,
        "body_size": len(obs.body),
        "body_sha256": hashlib.sha256(obs.body).hexdigest()[:16],
    }


@dataclass
class Exchange:
    """One call seen from both ends, plus what differed and the verdicts raised on it."""

    request_id: str
    outbound: dict[str, Any]
    inbound: dict[str, Any]
    mismatches: list[str] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "time": self.time,
            "outbound": self.outbound,
            "inbound": self.inbound,
            "mismatches": list(self.mismatches),
            "verdicts": list(self.verdicts),
        }


def _compare(out: dict[str, Any], inn: dict[str, Any], truncated: bool) -> list[str]:
    fields = ["method", "path", "query"]
    if not truncated:
        fields.append("body_sha256")
    if out["status"] is not None and inn["status"] is not None:
        fields.append("status")
    return [f for f in fields if out[f] != inn[f]]


class Joiner:
    """Pairs views by request id within `window` seconds; at most `max_pending` waiting."""

    def __init__(
        self, window: float = 10.0, max_pending: int = 50000, keep: int = 500
    ) -> None:
        self.window = window
        self.max_pending = max_pending
        self._pending: OrderedDict[str, tuple[float, Observation]] = OrderedDict()
        self.exchanges: deque[Exchange] = deque(maxlen=keep)  # joined, mismatched or alerted
        self._recent: OrderedDict[str, Exchange] = OrderedDict()  # joined, for late verdicts
        self._verdicts: dict[str, list[dict[str, Any]]] = {}  # verdicts before the join
        self.evicted = 0

    def add(self, obs: Observation) -> tuple[Exchange, list[Threat], Observation] | None:
        """Offer one view; on the second returns the exchange, mismatch threats, inbound view."""
        rid = obs.request_id
        if not rid or obs.extra.get("direction") not in ("inbound", "outbound"):
            return None
        now = time.monotonic()
        self._expire(now)
        first = self._pending.get(rid)
        if first is None or first[1].extra.get("direction") == obs.extra["direction"]:
            self._pending[rid] = (now, obs)
            self._pending.move_to_end(rid)
            if len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.evicted += 1
            return None
        del self._pending[rid]
        other = first[1]
        out, inn = (obs, other) if obs.extra["direction"] == "outbound" else (other, obs)
        ex = Exchange(rid, _view(out), _view(inn))
        ex.mismatches = _compare(
            ex.outbound, ex.inbound, out.body_truncated or inn.body_truncated
        )
        threats = [
            Threat(
                MISMATCH,
                f"exchange:{f}",
                f"outbound={ex.outbound[f]!r} inbound={ex.inbound[f]!r}"[:128],
            )
            for f in ex.mismatches
        ]
        self._recent[rid] = ex
        if len(self._recent) > 1000:
            self._recent.popitem(last=False)
        early = self._verdicts.pop(rid, None)
        if early:
            ex.verdicts.extend(early)
        if threats or early:
            self.exchanges.append(ex)
        return ex, threats, inn

    def note_verdict(self, request_id: str, verdict: dict[str, Any]) -> None:
        """Attach a non-allow verdict to its joined exchange so the alert shows both views."""
        ex = self._recent.get(request_id)
        if ex is None:  # not joined yet: keep it for the join
            waiting = self._verdicts.setdefault(request_id, [])
            if len(waiting) < 8:
                waiting.append(verdict)
            if len(self._verdicts) > 1000:
                self._verdicts.pop(next(iter(self._verdicts)))
            return
        if len(ex.verdicts) < 8:
            ex.verdicts.append(verdict)
        if not any(e is ex for e in self.exchanges):
            self.exchanges.append(ex)

    def _expire(self, now: float) -> None:
        while self._pending:
            rid, (seen, _) = next(iter(self._pending.items()))
            if now - seen < self.window:
                return
            del self._pending[rid]

    def pending(self) -> int:
        return len(self._pending)

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        return [e.as_dict() for e in list(self.exchanges)[-limit:]]
