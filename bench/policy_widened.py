"""The cost of judging ALLOW policies against the learned allowlists (Mesh.Policy.Widened "wider
than learned"; one run, seconds, no cluster needed).

Measured in the same run, against baselines of the same data:

1. **One policy**: an Istio AuthorizationPolicy (the export of one destination's allowlist: R
   rules, C callers) judged with the learned comparison, against the universal rules alone (what
   the guard paid before), p50 µs and the ratio.
2. **Judging all again**: the guard re-judges every ALLOW policy when its copy of the allowlists
   changes: N policies, total ms.
3. **One read**: what the controller does with serve's answer (parse it into an Allowlist,
   digest what the comparison reads) against `json.loads` of the same bytes (what reading it
   costs at least), as a ratio.

Rounds alternate; the spread is printed.

    .venv/bin/python bench/policy_widened.py [--destinations 500] [--rules 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshward.app.exports import export
from meshward.app.guardlearned import compared_digest
from meshward.core.allowlist import Allowlist, EndpointRule
from meshward.core.meshguard import Learned, Scope
from meshward.istio import guard


def allowlist(destinations: int, rules: int, callers: int) -> Allowlist:
    out = Allowlist()
    for d in range(destinations):
        profile = out.profile(f"shop/svc{d}")
        for r in range(rules):
            method = ("GET", "POST", "PUT", "DELETE")[r % 4]
            rule = EndpointRule(method, f"/api/v{r % 3}/res{r}/{{int}}/items/{{uuid}}")
            rule.sources = {f"ns{(d + c) % 40}/sa{c}": 1 for c in range(r % callers + 1)}
            profile.add_rule(rule)
            for s in rule.sources:
                profile.learn_source(s, 1.0)
    return out


def p50_us(fn: Any, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--destinations", type=int, default=500)
    ap.add_argument("--rules", type=int, default=20)
    ap.add_argument("--callers", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    learned_list = allowlist(args.destinations, args.rules, args.callers)
    policies = export(learned_list, lambda _: "monitor", "authorizationpolicy").objects
    scope = Scope(frozenset({"shop"}), learned=Learned(learned_list))
    universal = dataclasses.replace(scope, learned=None)
    one = policies[0]
    assert guard.authorization_policy(one, scope).weak == ()  # the export is never wider
    raw = json.dumps(learned_list.export_doc()).encode()
    print(
        f"{args.destinations} destinations x {args.rules} rules (<= {args.callers} callers); "
        f"allowlist document {len(raw) / 1e6:.1f} MB"
    )
    ratios, fulls, reads = [], [], []
    for _ in range(args.rounds):
        base = p50_us(lambda: guard.authorization_policy(one, universal), 200)
        with_learned = p50_us(lambda: guard.authorization_policy(one, scope), 200)
        ratios.append((base, with_learned))
        t0 = time.perf_counter()
        for p in policies:
            guard.authorization_policy(p, scope)
        fulls.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        json.loads(raw)
        floor = time.perf_counter() - t0
        t0 = time.perf_counter()
        parsed = Allowlist()
        parsed.import_doc(json.loads(raw))
        compared_digest(parsed)
        reads.append((time.perf_counter() - t0) / floor)
    base = statistics.median(b for b, _ in ratios)
    mine = statistics.median(m for _, m in ratios)
    spread = sorted(m / b for b, m in ratios)
    print(
        f"one policy: {mine:.0f} us p50 with the learned comparison, {base:.0f} us with the "
        f"universal rules alone: {mine / base:.1f}x (rounds {spread[0]:.1f}-{spread[-1]:.1f}x)"
    )
    print(
        f"judging all {len(policies)} policies again: {statistics.median(fulls) * 1e3:.0f} ms "
        f"(rounds {min(fulls) * 1e3:.0f}-{max(fulls) * 1e3:.0f} ms)"
    )
    print(
        f"one read of serve's answer: {statistics.median(reads):.1f}x json.loads of it "
        f"(rounds {min(reads):.1f}-{max(reads):.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
