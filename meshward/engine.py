"""The engine facade: one Observation in, one Verdict out, following the namespace's mode.

PROVISIONAL: the interface is final, the learning inside is being replaced by the real
allowlist (meshward.allowlist) in this same session.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from meshward.detect import Detector, NoDetector
from meshward.observation import Observation, Verdict

MODES = ("learn", "monitor", "enforce")


@dataclass
class EngineConfig:
    deny_threshold: float = 0.5  # enforce: deny at or above this score
    alert_threshold: float = 0.2  # monitor/enforce: alert at or above this score
    default_mode: str = "learn"
    flush_interval: float = 2.0  # seconds between batched store writes


class Engine:
    def __init__(
        self,
        store: Any = None,
        config: EngineConfig | None = None,
        detector: Detector | None = None,
    ) -> None:
        self.store = store
        self.config = config or EngineConfig()
        self.detector = detector or NoDetector()
        self._modes: dict[str, str] = {}
        self._seen: set[tuple[str, str, str]] = set()
        self._alerts: deque[dict[str, Any]] = deque(maxlen=1000)

    def mode_of(self, namespace: str) -> str:
        return self._modes.get(namespace or "default", self.config.default_mode)

    def set_mode(self, namespace: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (learn, monitor, enforce)")
        self._modes[namespace or "default"] = mode

    def evaluate(self, obs: Observation, mode: str | None = None) -> Verdict:
        mode = mode or self.mode_of(obs.destination.namespace)
        found = self.detector.inspect(obs)
        threats = obs.threats + found.threats
        key = (obs.destination.key, obs.method, obs.path)
        reasons: list[str] = []
        if mode == "learn" and not threats:
            self._seen.add(key)
        elif key not in self._seen:
            reasons.append("unknown-path")
        score = 1.0 if threats else (0.6 if reasons else 0.0)
        verdict = "allow"
        if mode != "learn" and score >= self.config.alert_threshold:
            verdict = "alert"
        if mode == "enforce" and score >= self.config.deny_threshold:
            verdict = "deny"
        if threats and verdict == "allow":
            verdict = "alert"
        v = Verdict(
            verdict, score, reasons, threats, None, mode, obs.destination.key, obs.source.key
        )
        if verdict != "allow":
            self._alerts.append(v.as_dict())
        return v

    def alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._alerts)[-limit:]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()
