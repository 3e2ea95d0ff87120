"""The enforce-readiness report's costs: what keeping the recent calls adds to every judged
call, and how long a report's replay takes.

  keep, same shape   `RecentCalls.keep` on calls of shapes already kept (the steady state: a
                     dict lookup, the path's digits folded, a count)
  keep, new shape    on calls of a new shape each, every one copied (the copy budget lifted:
                     a redacted replay copy made each time; past 500 shapes the oldest goes)
  keep, flood        the same calls with the default budget (50 copies a second): what a
                     flood of unique paths costs per call
  evaluate           `Engine.evaluate` (monitor, no detectors) of the same calls: the baseline,
                     the engine's own work per call, measured in the same run
  replay             `Engine.dry_run` in enforce over a full namespace sample (500 shapes), as
                     GET /api/v1/readiness runs it (without its yields)
  memory             bytes the sample accounts for, per kept shape, with 1 KiB JSON bodies

Medians of --rounds rounds (min-max); ratios against evaluate.

    PYTHONPATH=. .venv/bin/python bench/readiness.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

from meshward.app.recent import RecentCalls
from meshward.core.engine import Engine
from meshward.core.observation import Identity, Observation
from meshward.core.threats.inspection import NoDetector

BODY = json.dumps(
    {"items": [{"name": f"item {i}", "qty": i} for i in range(40)], "password": "hunter2hunter2"}
).encode()


def _word(i: int) -> str:
    """A letters-only name per number (digits would be folded into one shape)."""
    out = ""
    while True:
        i, r = divmod(i, 26)
        out += chr(97 + r)
        if not i:
            return out


def call(i: int, shapes: int) -> Observation:
    return Observation(
        seen_by="extauthz",
        source=Identity("shop", f"web{i % 7}"),
        destination=Identity("shop", "api"),
        method="POST",
        path=f"/{_word(i % shapes)}/users/{i}",
        query=f"page={i}&token=abc{i}def{i}ghi{i}jkl{i}mnopq",
        headers=[("content-type", "application/json"), ("authorization", f"Bearer t{i}")],
        body=BODY,
    )


def per_call_us(n: int, fn: Callable[[int], object]) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.calls
    steady = [call(i, 20) for i in range(n)]  # 20 path shapes x 7 callers
    fresh = [call(i, n) for i in range(n)]  # a new shape every call
    engine = Engine(detector=NoDetector())
    for obs in steady[:2000]:
        engine.evaluate(obs, mode="learn")
    runs: dict[str, list[float]] = {k: [] for k in ("evaluate", "same", "new", "flood", "replay")}
    size = 0.0
    for _ in range(args.rounds):
        runs["evaluate"].append(per_call_us(n, lambda i: engine.evaluate(steady[i], "monitor")))
        same = RecentCalls()
        runs["same"].append(per_call_us(n, lambda i, r=same: r.keep(steady[i])))
        recent = RecentCalls(copies_per_second=float("inf"))
        runs["new"].append(per_call_us(n, lambda i, r=recent: r.keep(fresh[i])))
        flood = RecentCalls()
        runs["flood"].append(per_call_us(n, lambda i, r=flood: r.keep(fresh[i])))
        kept = list(recent.calls("shop"))
        size = recent.size / max(1, len(kept))
        t0 = time.perf_counter()
        for k in kept:
            engine.dry_run(k.obs, "enforce")
        runs["replay"].append((time.perf_counter() - t0) * 1000)
    med = {k: statistics.median(v) for k, v in runs.items()}
    spread = {k: f"({min(v):.1f}-{max(v):.1f})" for k, v in runs.items()}
    base = med["evaluate"]
    print(f"evaluate (baseline)  {med['evaluate']:7.1f} µs/call {spread['evaluate']}")
    for key, name in (
        ("same", "keep, same shape"),
        ("new", "keep, new shape"),
        ("flood", "keep, flood"),
    ):
        ratio = med[key] / base
        print(f"{name:20} {med[key]:7.1f} µs/call {spread[key]}  {ratio:.3f}x evaluate")
    print(f"replay of 500 shapes {med['replay']:7.1f} ms {spread['replay']}")
    print(f"memory               {size:7.0f} bytes per kept shape (1 KiB JSON bodies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
