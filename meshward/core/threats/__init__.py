"""Embedded-threat detection: signatures (Hyperscan), libinjection, normalisation.

    from meshward.threats import default_detector
    inspection = default_detector().inspect(obs)   # Inspection(threats, partial)
"""

from meshward.threats.detector import ThreatDetector, default_detector, metadata_address
from meshward.threats.signatures import THREAT_NAMES

__all__ = ["THREAT_NAMES", "ThreatDetector", "default_detector", "metadata_address"]
