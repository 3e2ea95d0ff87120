"""Engine benchmark: learn and score throughput on one core, against a parse-only baseline.

Also: memory growth while learning 1,000,000 requests whose paths carry unique ids (the rule
count must stay small and RSS grow by at most 50 MB), and the learning quality on the OpenAPI
sample (false alerts on held-out normal traffic, deviations flagged).

Run: .venv/bin/python bench/engine.py [--requests N] [--memory-requests N]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import string
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from meshward.core import scoring
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Identity, Observation
from tests.support.openapi_traffic import DEVIATIONS, Traffic


def rate(n: int, fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def throughput(n: int) -> None:
    t = Traffic(seed=11)
    requests = [t.normal() for _ in range(n)]
    plain = Engine(config=EngineConfig(threats=False))
    baseline = rate(n, lambda: [scoring.features(o) for o in requests])
    learn = rate(n, lambda: [plain.evaluate(o, mode="learn") for o in requests])
    score = rate(n, lambda: [plain.evaluate(o, mode="enforce") for o in requests])
    print(f"throughput, one core, {n} requests of the OpenAPI sample (1 run):")
    print(f"  {'parse only (baseline)':38} {baseline:>9,.0f} req/s   1.00x")
    print(f"  {'learn':38} {learn:>9,.0f} req/s   {learn / baseline:.2f}x")
    print(
        f"  {'score (enforce, allowlist only)':38} {score:>9,.0f} req/s   {score / baseline:.2f}x"
    )
    try:
        full = Engine(config=EngineConfig(threats=True))
        full.allowlist = plain.allowlist
        with_threats = rate(n, lambda: [full.evaluate(o, mode="enforce") for o in requests])
        label = "score (enforce, allowlist + threats)"
        ratio = with_threats / baseline
        print(f"  {label:38} {with_threats:>9,.0f} req/s   {ratio:.2f}x")
    except ImportError as exc:
        print(f"  score with threats: unavailable ({exc})")
    goal = "met" if score >= 20_000 else "NOT met"
    print(f"  goal: scoring >= 20,000 req/s on one core (allowlist): {goal} ({score:,.0f} req/s)")


def unique_id_requests(n: int, seed: int = 5) -> Iterator[Observation]:
    """Requests whose paths carry ids never seen twice (typed and untyped)."""
    rnd = random.Random(seed)
    dest = Identity.parse("api.shop.svc.cluster.local")
    src = Identity.parse("shop/web")
    letters = string.ascii_lowercase
    for i in range(n):
        k = i % 5
        if k == 0:
            path = f"/users/{uuid.UUID(int=rnd.getrandbits(128))}/orders/{rnd.randint(1, 10**9)}"
        elif k == 1:
            path = f"/sessions/{rnd.getrandbits(96):024x}"
        elif k == 2:
            path = "/files/" + "".join(rnd.choice(letters) for _ in range(10)) + ".pdf"
        elif k == 3:
            path = f"/tags/{''.join(rnd.choice(letters) for _ in range(8))}/items"
        else:
            token = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(24))
            path = f"/reset/{token}"
        yield Observation("file", source=src, destination=dest, method="GET", path=path)


def memory(n: int) -> None:
    proc = psutil.Process()
    engine = Engine(config=EngineConfig(threats=False))
    for o in unique_id_requests(2000, seed=1):  # warm up allocator and caches
        engine.evaluate(o, mode="learn")
    gc.collect()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    for o in unique_id_requests(n):
        engine.evaluate(o, mode="learn")
    took = time.perf_counter() - t0
    gc.collect()
    grown = (proc.memory_info().rss - before) / 2**20
    rules = sorted(r.name for p in engine.allowlist.services.values() for r in p.rules())
    verdict = "met" if grown <= 50 and len(rules) <= 20 else "NOT met"
    print(f"memory: learning {n:,} requests with unique ids in {took:.1f} s:")
    print(f"  RSS growth {grown:.1f} MB, rules {len(rules)}: {', '.join(rules)}")
    print(f"  goal: rule count small and RSS growth <= 50 MB: {verdict}")


def quality() -> None:
    engine = Engine(config=EngineConfig(threats=False))
    t = Traffic(seed=7)
    for _ in range(4000):
        engine.evaluate(t.normal(), mode="learn")
    held = Traffic(seed=99)
    n = 10_000
    false = sum(engine.evaluate(held.normal(), mode="monitor").verdict != "allow" for _ in range(n))
    print(f"quality on the OpenAPI sample (4,000 learned, {n:,} held-out normal):")
    print(f"  false alerts: {false} ({100 * false / n:.2f}%; goal <= 0.5%)")
    bad = Traffic(seed=1234)
    for kind in DEVIATIONS:
        m = 1000
        hit = sum(
            engine.evaluate(bad.deviation(kind), mode="monitor").verdict != "allow"
            for _ in range(m)
        )
        print(f"  {kind:18} flagged {100 * hit / m:6.2f}% (goal >= 99%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--memory-requests", type=int, default=1_000_000)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    throughput(args.requests)
    quality()
    memory(args.memory_requests)


if __name__ == "__main__":
    main()
