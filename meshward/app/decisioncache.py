"""The ext_authz decision cache: the allowlist part of a verdict, where caching it is safe.

Safe means the allowlist answer is fully determined by the key: only body-less requests (the body
is never cached, it is inspected every time), only in monitor and enforce (learn changes the
allowlist on every request), only clean "allow" answers, and for at most `ttl` seconds; a mode
change clears it (`Server.mode_changed`). A running server does not reload profiles: `allowlist
import` is for a stopped server (docs/store.md), so no import is missed here. The threat
detectors still run on every hit, through the engine (`Engine.recheck`) so its failure handling
applies: a finding sends the request through the full engine, a detector failure gives
`inspection-failed`.
"""

from __future__ import annotations

from cachetools import TTLCache

from meshward.core.engine import Engine
from meshward.core.observation import Observation, Verdict

Key = tuple[str, str, str, str, str, str, str]


class DecisionCache:
    def __init__(self, engine: Engine, size: int = 10_000, ttl: float = 2.0) -> None:
        self.engine = engine
        self._cache: TTLCache[Key, Verdict] = TTLCache(maxsize=size, ttl=ttl)

    def key(self, obs: Observation) -> Key | None:
        mode = self.engine.mode_of(obs.destination.namespace)
        if mode == "learn" or obs.body or obs.body_size or obs.threats or obs.body_truncated:
            return None
        return (
            mode,
            obs.destination.key,
            obs.source.key,
            obs.method,
            obs.path,
            obs.query,
            obs.content_type,
        )

    def lookup(self, key: Key, obs: Observation) -> Verdict | None:
        """The verdict for a request with a cached clean allow: that allow if the detectors find
        nothing in this request, the engine's inspection-failed verdict if they fail; None on a
        miss or a finding (the caller evaluates the request in full)."""
        verdict = self._cache.get(key)
        if verdict is None:
            return None
        return self.engine.recheck(obs, verdict)

    def remember(self, key: Key, verdict: Verdict) -> None:
        if verdict.verdict == "allow" and not verdict.threats and not verdict.reasons:
            self._cache[key] = verdict

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)
