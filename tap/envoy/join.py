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

from meshward.core import redact
from meshward.core.observation import DIRECTIONS, Observation, Threat
from meshward.core.threats.names import EXCHANGE_MISMATCH


def _view(obs: Observation) -> dict[str, Any]:
    return {
        "direction": obs.direction or "",
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


Key = tuple[str, str, str]  # (x-request-id, authority, caller)


def _key(obs: Observation) -> Key:
    """The caller is the one both ends verified: the outbound view's source is the caller's own
    sidecar (its certificate, verified by serve), the inbound view's the peer certificate the
    callee's sidecar verified. So a view sent by any other sidecar, whatever x-request-id it
    carries, cannot take the place of the real caller's and steal or spoil the join."""
    return obs.request_id, obs.authority.lower(), obs.source.principal or obs.source.key


def _weight(obs: Observation) -> int:
    """What a waiting view holds, in bytes roughly: body and header text."""
    headers = sum(len(k) + len(v) for k, v in obs.headers)
    headers += sum(len(k) + len(v) for k, v in obs.response_headers)
    return 256 + len(obs.body) + headers + len(obs.path) + len(obs.query) + len(obs.request_id)


def _same_call(a: Observation, b: Observation) -> bool:
    return (a.method, a.path, a.query) == (b.method, b.path, b.query)


class Joiner:
    """Pairs the two views of one hop within `window` seconds; at most `max_pending` views and
    `max_bytes` of their bodies and headers waiting (a view may hold 64 KiB of body and as much
    of each header list, so the count alone allowed gigabytes).

    Apps pass x-request-id on to the calls they make (Istio asks them to, for tracing), so one
    id spans every hop of a request. A hop is therefore keyed by (x-request-id, authority,
    caller): Envoy forwards the Host unchanged from the caller's outbound to the callee's inbound
    sidecar, and both ends name the caller by its verified identity (`_key`). Within
    a key the opposite view of the same method, path and query is taken first; failing that, a
    single opposite view is taken as the same call changed in between (a mismatch). With several
    candidates and no exact one the pairing is ambiguous and nothing is joined.
    """

    def __init__(
        self,
        window: float = 10.0,
        max_pending: int = 50000,
        keep: int = 500,
        max_bytes: int = 256 << 20,
    ) -> None:
        self.window = window
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        # per key: (arrival, view, its _weight)
        self._pending: OrderedDict[Key, list[tuple[float, Observation, int]]] = OrderedDict()
        self._count = 0  # views waiting, over all keys
        self._bytes = 0  # their _weight, over all keys
        self.exchanges: deque[Exchange] = deque(maxlen=keep)  # joined, mismatched or alerted
        self._recent: OrderedDict[Key, Exchange] = OrderedDict()  # joined, for late verdicts
        self._verdicts: dict[Key, list[dict[str, Any]]] = {}  # verdicts before the join
        self.evicted = 0

    def add(self, obs: Observation) -> tuple[Exchange, list[Threat], Observation] | None:
        """Offer one view; on the second returns the exchange, mismatch threats, inbound view."""
        direction = obs.direction
        if not obs.request_id or direction not in DIRECTIONS:
            return None
        now = time.monotonic()
        self._expire(now)
        key = _key(obs)
        waiting = self._pending.get(key, [])
        others = [i for i, (_, v, _) in enumerate(waiting) if v.direction != direction]
        exact = [i for i in others if _same_call(waiting[i][1], obs)]
        pick = exact[0] if exact else (others[0] if len(others) == 1 else None)
        if pick is None:
            self._wait(key, now, obs)
            return None
        _, other, weight = waiting.pop(pick)
        self._count -= 1
        self._bytes -= weight
        if not waiting:
            del self._pending[key]
        return self._join(key, obs, other)

    def _wait(self, key: Key, now: float, obs: Observation) -> None:
        waiting = self._pending.setdefault(key, [])
        self._pending.move_to_end(key)
        if len(waiting) >= 16:  # one id and authority, many calls: keep the newest
            self._bytes -= waiting.pop(0)[2]
            self._count -= 1
            self.evicted += 1
        weight = _weight(obs)
        waiting.append((now, obs, weight))
        self._count += 1
        self._bytes += weight
        while self._count > self.max_pending or self._bytes > self.max_bytes:
            _, dropped = self._pending.popitem(last=False)
            self._count -= len(dropped)
            self._bytes -= sum(w for _, _, w in dropped)
            self.evicted += len(dropped)

    def _join(
        self, key: Key, obs: Observation, other: Observation
    ) -> tuple[Exchange, list[Threat], Observation]:
        out, inn = (obs, other) if obs.direction == "outbound" else (other, obs)
        ex = Exchange(obs.request_id, _view(out), _view(inn))
        ex.mismatches = _compare(ex.outbound, ex.inbound, out.body_truncated or inn.body_truncated)
        # compared as sent; kept and shown redacted (the views are served by /api/v1/exchanges)
        for view in (ex.outbound, ex.inbound):
            view["path"] = redact.path(view["path"])
            view["query"] = redact.query(view["query"])
        threats = [
            Threat(
                EXCHANGE_MISMATCH,
                f"exchange:{f}",
                f"outbound={ex.outbound[f]!r} inbound={ex.inbound[f]!r}"[:128],
            )
            for f in ex.mismatches
        ]
        self._recent[key] = ex
        if len(self._recent) > 1000:
            self._recent.popitem(last=False)
        early = self._verdicts.pop(key, None)
        if early:
            ex.verdicts.extend(early)
        if threats or early:
            self.exchanges.append(ex)
        return ex, threats, inn

    def note_verdict(self, obs: Observation, verdict: dict[str, Any]) -> None:
        """Attach a non-allow verdict to its joined exchange so the alert shows both views."""
        key = _key(obs)
        ex = self._recent.get(key)
        if ex is None:  # not joined yet: keep it for the join
            waiting = self._verdicts.setdefault(key, [])
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
            key, waiting = next(iter(self._pending.items()))
            if now - waiting[-1][0] < self.window:
                return
            del self._pending[key]
            self._count -= len(waiting)
            self._bytes -= sum(w for _, _, w in waiting)

    def pending(self) -> int:
        return self._count

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        return [e.as_dict() for e in list(self.exchanges)[-limit:]]
