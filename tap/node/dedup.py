"""One alert per key per window: the first detection is reported at once, later ones in the
same window are counted and reported as one summary when the window closes.

The network threat monitor (tap.node.netthreats) and the mesh-guard detectors
(tap.node.controlplane, tap.node.bypass) use it; the open windows are capped, so a flood of
distinct keys costs a counter, never memory.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from dataclasses import replace as _copy

from meshward.core.observation import Observation


@dataclass(slots=True)
class _Open:
    start: float
    repeats: int
    last: Observation


class AlertDedup:
    """Open windows per key; `stats` counts alerts, suppressed repeats and untracked keys."""

    def __init__(self, window: float, max_keys: int, stats: Counter[str]) -> None:
        self.window = window
        self.max_keys = max_keys
        self.stats = stats
        self._open: dict[object, _Open] = {}

    def repeat(self, key: object) -> Observation | None:
        """Count a detection into key's open window, if there is one, and return the alert the
        window's summary will report (the caller may refresh it in place, e.g. the newest
        count); None when no window is open. No Observation needs to be built for a repeat."""
        entry = self._open.get(key)
        if entry is None:
            return None
        entry.repeats += 1
        self.stats["suppressed"] += 1
        return entry.last

    def report(self, key: object, obs: Observation, out: list[Observation]) -> None:
        """Append `obs` to out unless key's window is open (then count it as a repeat)."""
        entry = self._open.get(key)
        if entry is not None:
            entry.repeats += 1
            entry.last = obs
            self.stats["suppressed"] += 1
            return
        obs.extra.update(repeats="0", dedup_window_s=f"{self.window:g}")
        if len(self._open) < self.max_keys:
            self._open[key] = _Open(obs.time, 0, obs)
        else:
            self.stats["untracked"] += 1
        self.stats["alerts"] += 1
        out.append(_copy(obs, extra=dict(obs.extra), threats=[_copy(t) for t in obs.threats]))

    def tick(self, now: float) -> list[Observation]:
        """Close due windows: one summary for those with repeats (which opens the next)."""
        out: list[Observation] = []
        for key, entry in list(self._open.items()):
            if now - entry.start < self.window:
                continue
            if entry.repeats:
                extra = dict(entry.last.extra, repeats=str(entry.repeats), summary="true")
                extra["dedup_window_s"] = f"{self.window:g}"
                threats = [_copy(t) for t in entry.last.threats]  # later refreshes stay ours
                out.append(_copy(entry.last, time=now, extra=extra, threats=threats))
                self.stats["alerts"] += 1
                entry.start, entry.repeats = now, 0
            else:
                del self._open[key]
        return out

    def __len__(self) -> int:
        return len(self._open)
