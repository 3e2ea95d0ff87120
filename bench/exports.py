"""What the native-policy exports cost: making them, and Envoy enforcing the AuthorizationPolicy.

1. Export: an allowlist of `--services` services (20 rules, 5 callers each, templated paths,
   query and JSON body fields) exported as AuthorizationPolicy, Linkerd policy and OpenAPI, and
   rendered to YAML (what the CLI and `GET /api/v1/exports/...` do); the baseline is the plain
   allowlist document in YAML (`meshward allowlist export`) of the same allowlist, in the same
   run. Printed: median ms per export over `--rounds`, and the ratio to the baseline.
2. Enforcement: the sample API's learned allowlist (tests/support/sample_api.yaml) exported as
   an AuthorizationPolicy and translated to Envoy's RBAC filter as istiod does
   (tests/support/istio_rbac.py), in a real Envoy 1.40 sidecar under mesh mTLS: (t) with path
   templates, (p) with prefixes (--no-path-templates), (a) the same sidecar without the RBAC
   filter, the baseline. One client holding shop/web's certificate sends the held-out normal
   requests of that caller over one keep-alive connection; rounds interleaved, each starting
   with another variant. Printed: p50 per variant and the added p50 against (a), median and
   spread over rounds. The client is Python (~100 µs a request): the added µs are what matters.

    PYTHONPATH=. .venv/bin/python bench/exports.py [--rounds 5] [--requests 2000] [--services 500]
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshward.app.exports import FORMATS, export_engine, render  # noqa: E402
from meshward.core.allowlist import EndpointRule  # noqa: E402
from meshward.core.engine import Engine, EngineConfig  # noqa: E402
from meshward.istio.authzexport import authorization_policies  # noqa: E402
from meshward.istio.certs import MeshCA  # noqa: E402
from meshward.istio.envoyproc import EnvoyProcess  # noqa: E402
from tests.support.istio_rbac import RBAC, rbac_sidecar  # noqa: E402
from tests.support.learned import sample_engine  # noqa: E402
from tests.support.openapi_traffic import Traffic  # noqa: E402


def synthetic(services: int) -> Engine:
    engine = Engine(config=EngineConfig(threats=False))
    for s in range(services):
        ns = f"ns{s % 20}"
        profile = engine.allowlist.profile(f"{ns}/svc{s}")
        callers = [f"{ns}/caller{c}" for c in range(5)]
        for c in callers:
            profile.learn_source(c, 1.0)
        for r in range(20):
            rule = EndpointRule(("GET", "POST", "PUT", "DELETE")[r % 4], f"/api/v1/res{r}/{{int}}")
            rule.sources = {c: 1 for c in callers[: 1 + r % 5]}
            rule.query = {"limit": {"int"}, "q": {"word"}}
            if rule.method in ("POST", "PUT"):
                rule.body_kinds = {"json"}
                rule.content_types = {"application/json"}
                rule.body = {"$.name": {"word"}, "$.items[].id": {"integer"}}
            profile.add_rule(rule)
        engine.set_mode(ns, "enforce" if s % 2 else "monitor")
    return engine


def bench_export(services: int, rounds: int) -> None:
    engine = synthetic(services)
    timings: dict[str, list[float]] = {f: [] for f in ("allowlist-yaml", *FORMATS)}
    sizes: dict[str, int] = {}
    for r in range(rounds):
        order = list(timings)
        order = order[r % len(order) :] + order[: r % len(order)]
        for name in order:
            t0 = time.perf_counter()
            if name == "allowlist-yaml":
                text = yaml.safe_dump(engine.allowlist.export_doc(stats=False), sort_keys=False)
            else:
                text = render(export_engine(engine, name), name)
            timings[name].append((time.perf_counter() - t0) * 1000)
            sizes[name] = len(text)
    base = statistics.median(timings["allowlist-yaml"])
    print(f"export of {services} services x 20 rules, {rounds} rounds (median ms, spread)")
    for name, ts in timings.items():
        med = statistics.median(ts)
        print(
            f"  {name:20s} {med:8.1f} ms  [{min(ts):.1f}-{max(ts):.1f}]  "
            f"{med / base:5.2f}x baseline  {sizes[name] / 1e6:6.2f} MB"
        )


class Client:
    def __init__(self, port: int, tls: Any) -> None:
        ctx = ssl.create_default_context(cafile=tls.ca_cert)
        ctx.load_cert_chain(tls.cert_chain, tls.private_key)
        ctx.check_hostname = False
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)

    def timed(self, method: str, path: str) -> float:
        t0 = time.perf_counter_ns()
        self.conn.request(method, path)
        r = self.conn.getresponse()
        r.read()
        took = (time.perf_counter_ns() - t0) / 1000
        if r.status != 200:
            raise SystemExit(f"{method} {path}: {r.status} (the policy must allow it)")
        return took


def bench_rbac(rounds: int, requests: int) -> None:
    engine = sample_engine()
    held_out = Traffic(seed=99)
    calls: list[tuple[str, str]] = []
    while len(calls) < 500:
        obs = held_out.normal()
        if obs.source.key == "shop/web":
            calls.append((obs.method, obs.path + (f"?{obs.query}" if obs.query else "")))
    with tempfile.TemporaryDirectory(prefix="meshward-bench-exports-") as tmp:
        ca = MeshCA(Path(tmp) / "ca")
        api, web = ca.issue("shop", "api"), ca.issue("shop", "web")
        variants = {}
        for name, templates in (("t", True), ("p", False), ("a", None)):
            policies = authorization_policies(
                engine.allowlist, engine.mode_of, path_templates=bool(templates)
            ).objects
            boot = rbac_sidecar(api, policies)
            if templates is None:  # the same sidecar without RBAC
                hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                filters = hcm["typed_config"]["http_filters"]
                hcm["typed_config"]["http_filters"] = [f for f in filters if f["name"] != RBAC]
            variants[name] = boot
        envoys = {n: EnvoyProcess(b, name=f"bench-rbac-{n}").start() for n, b in variants.items()}
        try:
            clients = {n: Client(e.port, web) for n, e in envoys.items()}
            for c in clients.values():  # handshakes and warm-up
                for method, path in calls[:200]:
                    c.timed(method, path)
            p50: dict[str, list[float]] = {n: [] for n in variants}
            names = list(variants)
            for r in range(rounds):
                for n in names[r % 3 :] + names[: r % 3]:
                    times = [clients[n].timed(*calls[i % len(calls)]) for i in range(requests)]
                    p50[n].append(statistics.median(times))
        finally:
            for e in envoys.values():
                e.stop()
    labels = {"a": "(a) no RBAC", "t": "(t) RBAC, templates", "p": "(p) RBAC, prefixes"}
    print(f"Envoy RBAC from the exported policy, {rounds} rounds x {requests} requests (p50 µs)")
    for n in ("a", "t", "p"):
        line = f"  {labels[n]:22s} {statistics.median(p50[n]):7.1f} µs"
        if n != "a":
            added = [x - a for x, a in zip(p50[n], p50["a"], strict=True)]
            spread = f"[{min(added):+.1f}..{max(added):+.1f}]"
            line += f"  added {statistics.median(added):+6.1f} µs {spread}"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--services", type=int, default=500)
    args = ap.parse_args()
    bench_export(args.services, args.rounds)
    bench_rbac(args.rounds, args.requests)


if __name__ == "__main__":
    main()
