"""Embedded-threat detection: signatures (Hyperscan), libinjection, normalisation.

    from meshward.core.threats import default_detector
    inspection = default_detector().inspect(obs)   # Inspection(threats, partial)
"""

from meshward.core.threats.detector import ThreatDetector, default_detector, metadata_address
from meshward.core.threats.signatures import THREAT_NAMES

__all__ = ["THREAT_NAMES", "ThreatDetector", "default_detector", "metadata_address"]
