"""The detector interface: how threat detectors plug into scoring.

The engine knows only this Protocol; the embedded-threat detectors (`meshward.core.threats`) and any
future ones implement it. Detectors are pure: Observation in, findings out, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from meshward.core.bodies import DecodedBody
from meshward.core.observation import Observation, Threat


@dataclass(slots=True)
class Inspection:
    """What detectors found in one Observation."""

    threats: list[Threat] = field(default_factory=list)
    partial: bool = False  # some of the body was not inspected (size limits, truncation)


class Detector(Protocol):
    """Finds embedded threats in an Observation. Must be bounded in time and memory.

    `body` is the request body as the engine already decoded it (decode once per request);
    a detector called without it decodes the body itself.
    """

    def inspect(self, obs: Observation, body: DecodedBody | None = None) -> Inspection: ...


class NoDetector:
    """The detector used when threat detection is switched off."""

    def inspect(self, obs: Observation, body: DecodedBody | None = None) -> Inspection:
        return Inspection()
