"""Regression floors on the shared corpora (bench/detect.py prints the full figures).

Skips cleanly when ../shared/data is not there. Samples are deterministic (every k-th line) to
keep the run short; the floors sit a little under the measured rates.
"""

from __future__ import annotations

import pytest

from bench.detect import CLASSES, PLACEMENTS, load_httpparams, load_payloads, place, shared_data
from meshward.core.threats import ThreatDetector

ROOT = shared_data()
pytestmark = pytest.mark.skipif(
    not (ROOT / "payloads").is_dir() or not (ROOT / "httpparams").is_dir(),
    reason=f"shared data not found at {ROOT} (set MESHWARD_SHARED)",
)
DET = ThreatDetector(level=1)
# Class-specific detection floors at level 1, in %, query placement (bench: same in all three).
FLOORS = {
    "sqli": 95.0,
    "xss": 95.0,
    "traversal": 95.0,
    "ssti": 95.0,
    "nosql": 90.0,
    "cmdi": 86.0,
    "path-traversal": 82.0,
}


def every(items: list[str], n: int) -> list[str]:
    step = max(1, len(items) // n)
    return items[::step]


def rate(payloads: list[str], want: str | None, where: str = "query") -> float:
    hits = 0
    for p in payloads:
        threats = DET.inspect(place(p, where)).threats
        hits += any(t.name == want for t in threats) if want else bool(threats)
    return 100.0 * hits / len(payloads)


@pytest.mark.parametrize("cls", ["sqli", "xss", "traversal", "ssti", "nosql", "cmdi"])
def test_payload_lists(cls: str) -> None:
    payloads, _ = load_payloads(ROOT)
    assert rate(every(payloads[cls], 300), CLASSES[cls]) >= FLOORS[cls]


@pytest.mark.parametrize("cls", ["sqli", "xss", "path-traversal", "cmdi"])
def test_httpparams_attacks(cls: str) -> None:
    attacks, _ = load_httpparams(ROOT)
    assert rate(every(attacks[cls], 400), CLASSES[cls]) >= FLOORS[cls]


def test_httpparams_norm_false_positives() -> None:
    _, norm = load_httpparams(ROOT)
    assert rate(every(norm, 3000), None) <= 0.5


@pytest.mark.parametrize("where", PLACEMENTS)
@pytest.mark.parametrize("cls", ["sqli", "cmdi", "traversal"])
def test_every_placement(cls: str, where: str) -> None:
    """A payload in a path segment, an untyped form body or a cookie is found as in a query
    (path: a bare command name as a whole segment is a route name, so a little lower)."""
    payloads, _ = load_payloads(ROOT)
    floor = FLOORS[cls] - (2.0 if where == "path" else 0.0)
    assert rate(every(payloads[cls], 150), CLASSES[cls], where) >= floor
