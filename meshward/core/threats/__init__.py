"""Embedded-threat detection: signatures (Hyperscan), libinjection, normalisation.

    from meshward.core.threats import default_detector
    inspection = default_detector().inspect(obs)   # Inspection(threats, partial)

The detector is imported on first use, so a process that needs only the threat names
(`meshward.core.threats.names`, e.g. the node tap) does not load Hyperscan.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from meshward.core.threats.names import HTTP_THREATS, THREAT_NAMES

if TYPE_CHECKING:
    from meshward.core.threats.detector import ThreatDetector, default_detector, metadata_address

__all__ = ["HTTP_THREATS", "THREAT_NAMES", "ThreatDetector", "default_detector", "metadata_address"]
_DETECTOR = frozenset({"ThreatDetector", "default_detector", "metadata_address"})


def __getattr__(name: str) -> Any:
    if name in _DETECTOR:
        return getattr(importlib.import_module("meshward.core.threats.detector"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
