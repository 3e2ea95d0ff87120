"""Network-monitor helpers for the tests."""

from __future__ import annotations

from meshward.tap.node.netthreats import NetworkMonitor


def load_baseline(mon: NetworkMonitor, data: dict[str, list[tuple[str, str, int]]]) -> None:
    """Seed `mon` with UDP peers in the form `baseline()` returns (its caps apply): the product
    does not persist the baseline, so only the tests need this."""
    for key, peers in data.items():
        for direction, peer, port in peers:
            mon._learn(key, (str(direction), str(peer), int(port)))
