"""Alert quotas: one noisy source (or one flooded destination) cannot push everyone else's
alerts out of the history.

The same numbers bound the alerts the engine keeps between two drains (`QuotaGate`) and the
history the store retains (meshward/app/store.py trims each source and each destination to its
quota, then the whole history to `total`, oldest first; the shared PostgreSQL store,
meshward/app/pgstore.py, keeps the same shares of its larger history: `scaled`). With the
defaults one source holds at most a tenth of the history and one destination a fifth, so a
flood from one caller, or aimed at one service, leaves at least 9,000 of the 10,000 places to
the others.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AlertQuota:
    per_source: int = 1_000
    per_destination: int = 2_000
    total: int = 10_000

    def __post_init__(self) -> None:
        if min(self.per_source, self.per_destination, self.total) < 1:
            raise ValueError("alert quotas must be at least 1")

    def scaled(self, total: int) -> AlertQuota:
        """The same shares of a history of `total` alerts: the shared PostgreSQL store keeps
        1,000,000, so with the defaults one source holds at most 100,000 of it and one
        destination 200,000 (rounded down, at least 1)."""
        if total < 1:
            raise ValueError("alert quotas must be at least 1")

        def share(n: int) -> int:
            return max(1, n * total // self.total)

        return AlertQuota(share(self.per_source), share(self.per_destination), total)


class QuotaGate:
    """Admits alerts while their source and destination are under quota, until `reset()`.

    `refused` counts what it turned away, by which quota; `first_refusal` says whether this is
    the first refusal of that key since the last reset (the caller logs it once, not per alert).
    """

    def __init__(self, quota: AlertQuota, refused: Counter[str] | None = None) -> None:
        self.quota = quota
        self._sources: Counter[str] = Counter()
        self._destinations: Counter[str] = Counter()
        self._admitted = 0
        self._refused_keys: set[str] = set()
        self.refused: Counter[str] = Counter() if refused is None else refused

    def admit(self, source: str, destination: str) -> str:
        """ "" when admitted, else the quota that refused it: source, destination or total."""
        q = self.quota
        if self._sources[source] >= q.per_source:
            why = "alert-source-quota"
        elif self._destinations[destination] >= q.per_destination:
            why = "alert-destination-quota"
        elif self._admitted >= q.total:
            why = "alert-total-quota"
        else:
            self._sources[source] += 1
            self._destinations[destination] += 1
            self._admitted += 1
            return ""
        self.refused[why] += 1
        return why

    def first_refusal(self, key: str) -> bool:
        if key in self._refused_keys:
            return False
        self._refused_keys.add(key)
        return True

    def reset(self) -> None:
        self._sources.clear()
        self._destinations.clear()
        self._refused_keys.clear()
        self._admitted = 0
