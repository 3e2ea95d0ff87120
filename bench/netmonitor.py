"""Cost per packet of NetworkMonitor.feed against decode() of the same frames, in the same run
(best of 3, the machine is shared), and the memory its state takes under a spoofed flood.

Run: PYTHONPATH=. .venv/bin/python -m bench.netmonitor
"""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Callable

from meshward.tap.node.netthreats import NetworkMonitor
from meshward.tap.node.packet import ICMP, UDP, Packet, decode
from tests.support import frames as f


def _frames(kind: str, n: int) -> list[bytes]:
    rnd = random.Random(7)
    out = []
    for i in range(n):
        if kind == "icmp echo pairs":
            data = f.icmp(8 if i % 2 == 0 else 0, 0, 1, i // 2, b"x" * 56)
            a, b = ("10.0.0.1", "10.0.0.2") if i % 2 == 0 else ("10.0.0.2", "10.0.0.1")
            ip = f.ipv4(a, b, ICMP, data)
        elif kind == "dns queries":
            q = f.dns_query(f"svc{i % 50}.shop.svc.cluster.local", ident=i & 0xFFFF)
            ip = f.ipv4("10.0.0.1", "10.0.0.2", UDP, f.udp(30000 + i % 20000, 53, q))
        else:  # spoofed random-source UDP flood
            src = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            ip = f.ipv4(src, "10.0.0.2", UDP, f.udp(rnd.randrange(1024, 65535), 9999, b"z" * 18))
        out.append(f.ether(ip))
    return out


def _best_ns(fn: Callable[[], None], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


def main() -> None:
    n = 20_000
    for kind in ("icmp echo pairs", "dns queries", "spoofed udp flood"):
        frames = _frames(kind, n)
        decoded = (decode(fr, 1000 + i * 1e-4) for i, fr in enumerate(frames))
        pkts: list[Packet] = [p for p in decoded if p is not None]

        def decode_all() -> None:
            for fr in frames:  # noqa: B023
                decode(fr, 0.0)

        base = _best_ns(decode_all, n)

        def run() -> None:
            mon = NetworkMonitor()
            for p in pkts:  # noqa: B023
                mon.feed(p)

        ns = _best_ns(run, n)
        print(f"{kind:18s} feed {ns:6.0f} ns/packet = {ns / base:4.1f}x decode ({base:.0f} ns)")
    for total in (50_000, 200_000):
        frames = _frames("spoofed udp flood", total)
        mon = NetworkMonitor()
        tracemalloc.start()
        for i, fr in enumerate(frames):
            p = decode(fr, 1000 + i * 1e-5)
            if p is not None:
                mon.feed(p)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"spoofed flood of {total} packets from random sources: monitor peak "
            f"{peak / 1e6:.1f} MB, untracked {mon.stats['untracked']}"
        )


if __name__ == "__main__":
    main()
