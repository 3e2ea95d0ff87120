"""The recent calls of each namespace, kept for the enforce-readiness report (a pipeline step).

What is kept: per namespace (the destination's), one replay copy per call *shape* (caller,
service, method, the path with its digit runs folded, the query's parameter names), with how
many calls of that shape came since it was first kept and when the last one came. The copy is
`meshward.core.readiness.for_replay`'s: secrets taken out (their value classes kept), no
response, and a body only when it is JSON or a form under 16 KiB. A shape's copy is made when
it is first seen and again after `refresh` seconds, so a steady stream of one shape costs a
dict lookup per call, not a redaction. Copies are made at most `copies_per_second` (a token
bucket): a flood of new shapes (unique paths) costs a count each, not a redaction each; a
call over the budget is counted in `skipped` and not kept (bench/readiness.py has the costs).

Bounded: at most `per_namespace` shapes per namespace (the least recently seen go first), at
most `namespaces` namespaces (likewise), and at most `budget` bytes of copies in all (the
fullest namespace gives up its oldest shape). It lives in serve's memory only: it is never
written anywhere and does not survive a restart; each replica keeps its own.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshward.core.observation import Observation
from meshward.core.readiness import for_replay

if TYPE_CHECKING:
    from meshward.app.pipeline import Call

_DIGITS = re.compile(r"\d+")
_VALUES = re.compile(r"=[^&]*")
Shape = tuple[str, str, str, str, str]


@dataclass(slots=True)
class Kept:
    """One call shape: the replay copy of its latest kept call, and how many calls it had."""

    obs: Observation
    body_kept: bool
    calls: int
    first: float
    last: float
    copied: float  # when `obs` was made (monotonic)
    size: int


def _size(obs: Observation) -> int:
    return (
        200
        + len(obs.path)
        + len(obs.query)
        + len(obs.body)
        + sum(len(n) + len(v) for n, v in obs.headers)
    )


def shape(obs: Observation) -> Shape:
    """The key calls of one kind share: ids in the path folded, query values left out."""
    q = obs.query
    names = _VALUES.sub("", q) if q else ""  # one pass in C: this runs on every Check
    return (obs.source.key, obs.destination.key, obs.method, _DIGITS.sub("0", obs.path), names)


class RecentCalls:
    """The bounded, redacted sample of recent calls per namespace."""

    def __init__(
        self,
        per_namespace: int = 500,
        namespaces: int = 256,
        budget: int = 16 << 20,
        refresh: float = 60.0,
        copies_per_second: float = 50.0,
    ) -> None:
        self.per_namespace = per_namespace
        self.namespaces = namespaces
        self.budget = budget
        self.refresh = refresh
        self.size = 0
        self.rate = copies_per_second
        self.skipped = 0  # calls of a new or stale shape left out: over the copy budget
        self._tokens = copies_per_second
        self._filled = time.monotonic()
        self._by_ns: OrderedDict[str, OrderedDict[Shape, Kept]] = OrderedDict()
        self._ns_size: dict[str, int] = {}

    def keep(self, obs: Observation, calls_of_shape: int = 1, last: float | None = None) -> None:
        """Note one judged call (its shape counted; a copy made when new or stale), or
        `calls_of_shape` calls of `obs`'s shape, the last at `last` (an ingest batch judged in
        the worker process: meshward.app.batchjudge)."""
        last = obs.time if last is None else last
        ns = obs.destination.namespace or "default"
        key = shape(obs)
        calls = self._by_ns.get(ns)
        kept = calls.get(key) if calls is not None else None
        now = time.monotonic()
        if kept is not None and calls is not None:
            kept.calls += calls_of_shape
            kept.last = last
            calls.move_to_end(key)
            if now - kept.copied < self.refresh or not self._copy_allowed(now):
                return
        elif not self._copy_allowed(now):
            self.skipped += calls_of_shape
            return
        if calls is None:
            calls = self._by_ns[ns] = OrderedDict()
            self._ns_size[ns] = 0
            if len(self._by_ns) > self.namespaces:
                self._drop_namespace(next(iter(self._by_ns)))
        else:
            self._by_ns.move_to_end(ns)
        if kept is not None:
            self._account(ns, -kept.size)
        copy, body_kept = for_replay(obs)
        size = _size(copy)
        if kept is None:
            kept = Kept(copy, body_kept, calls_of_shape, obs.time, last, now, size)
            calls[key] = kept
            if len(calls) > self.per_namespace:
                self._drop_oldest(ns)
        else:
            kept.obs, kept.body_kept, kept.copied, kept.size = copy, body_kept, now, size
        self._account(ns, size)
        while self.size > self.budget:
            fullest = max(self._ns_size, key=self._ns_size.__getitem__)
            self._drop_oldest(fullest)

    def _copy_allowed(self, now: float) -> bool:
        self._tokens = min(self.rate, self._tokens + (now - self._filled) * self.rate)
        self._filled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _account(self, ns: str, delta: int) -> None:
        self.size += delta
        self._ns_size[ns] += delta

    def _drop_oldest(self, ns: str) -> None:
        calls = self._by_ns[ns]
        _, gone = calls.popitem(last=False)
        self._account(ns, -gone.size)
        if not calls:
            self._drop_namespace(ns)

    def _drop_namespace(self, ns: str) -> None:
        self._by_ns.pop(ns, None)
        self.size -= self._ns_size.pop(ns, 0)

    def calls(self, namespace: str, since: float = 0.0) -> Iterator[Kept]:
        """The kept shapes of `namespace` whose last call came at or after `since`, oldest
        first (a copy of the list: the loop may keep calls while a replay reads it)."""
        return iter([k for k in self._by_ns.get(namespace, {}).values() if k.last >= since])

    def namespaces_kept(self) -> list[str]:
        return sorted(self._by_ns)

    # the pipeline's doors (meshward.app.pipeline): every judged call is kept
    def _door(self, call: Call) -> None:
        if call.obs.method:  # a network event (no request) has nothing to replay
            self.keep(call.obs)

    check = tap = ingest = _door
