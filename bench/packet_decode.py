"""Cost per packet of tap.node.packet.decode, against a trivial per-packet call measured alongside.

Run: PYTHONPATH=. .venv/bin/python -m bench.packet_decode
"""

from __future__ import annotations

import time
from collections.abc import Callable

from meshward.tap.node.packet import ICMP, TCP, UDP, decode
from tests.support import frames as f


def _baseline(frame: bytes, ts: float, link: str = "ether") -> tuple[int, float]:
    """What any per-packet Python callback costs at least: a call and a tuple."""
    return (len(frame), ts)


def _per_packet_ns(fn: Callable[..., object], frame: bytes, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn(frame, 0.0)
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def main() -> None:
    n = 100_000
    cases = {
        "ipv4 tcp 1400B": f.ether(
            f.ipv4("10.0.0.1", "10.0.0.2", TCP, f.tcp(1, 8080, 1, 1, 0x18, b"x" * 1400))
        ),
        "ipv4 udp dns": f.ether(f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(5353, 53, b"q" * 40))),
        "ipv4 icmp echo": f.ether(f.ipv4("10.0.0.1", "10.0.0.2", ICMP, f.icmp(8, 0, 1, 1, b"p"))),
        "ipv6 udp": f.ether(f.ipv6("fd00::1", "fd00::2", UDP, f.udp(1, 53, b"q" * 40))),
    }
    base = _per_packet_ns(_baseline, cases["ipv4 udp dns"], n)
    print(f"baseline (call + tuple): {base:.0f} ns/packet")
    for name, frame in cases.items():
        ns = _per_packet_ns(decode, frame, n)
        print(
            f"decode {name:16s} {ns:6.0f} ns/packet  {ns / base:5.1f}x baseline  "
            f"{1e9 / ns / 1e6:.2f} M packets/s"
        )


if __name__ == "__main__":
    main()
