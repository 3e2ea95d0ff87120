"""Reading Prometheus expositions in tests and benchmarks."""

from __future__ import annotations


def sample(exposition: str, line_start: str) -> float:
    """The value of the first sample line starting with `line_start` (0.0 when absent)."""
    for line in exposition.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
