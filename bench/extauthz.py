"""ext_authz cost through a real Envoy 1.40, wrk at 1 and 16 connections (one run, ~2 minutes).

Every scenario sends the same request, POST /api/orders with a 1 KB JSON body, through one
sidecar (rendered by istio/bootstrap.py) to the same app (an Envoy direct_response):
  (a) Envoy alone (no meshward filter)
  (b) Envoy + ext_authz to an always-allow Python grpc.aio server (uvloop): the transport floor
  (c) Envoy + ext_authz to `meshward serve`, namespace in enforce, allowlist learned before
  (d) Envoy + native RBAC allowing exactly that method and path: the physical limit
The tap filter is left out everywhere (bench/tap.py measures it). Added latency is p50/p99 minus
(a)'s at the same connection count; goals: (c) adds <= 1.15x the p50 (b) adds, and keeps >= 0.85x
its requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time

from envoy_harness import (
    ROOT,
    EnvoyProcess,
    MeshwardServe,
    WrkResult,
    app_bootstrap,
    free_port,
    post_script,
    request,
    sidecar,
    wrk,
)

EXT_AUTHZ = "envoy.filters.http.ext_authz"
RBAC = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "orders": {
                    "permissions": [
                        {"and_rules": {"rules": [
                            {"header": {"name": ":method", "string_match": {"exact": "POST"}}},
                            {"url_path": {"path": {"exact": "/api/orders"}}},
                        ]}}
                    ],
                    "principals": [{"any": True}],
                }
            },
        },
    },
}  # fmt: skip


def order_body(i: int = 0) -> bytes:
    """A 1 KB JSON order; values vary with `i`, the shape does not."""
    doc = {
        "order_id": 100000 + i,
        "customer": {"id": 4000 + i % 50, "name": "Ada Lovelace", "email": "ada@example.com"},
        "items": [{"sku": f"sku-{(i + k) % 90:04d}", "qty": 1 + k % 3, "price": 12.5 + k}
                  for k in range(9)],
        "note": "leave at the door",
    }
    raw = json.dumps(doc, separators=(",", ":"))
    doc["pad"] = "x" * max(0, 1024 - len(raw) - 10)
    return json.dumps(doc, separators=(",", ":")).encode()


async def _allow_server(port: int) -> None:
    import grpc
    import uvloop  # noqa: F401  (the loop policy is set by the caller)
    from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
    from google.rpc import code_pb2, status_pb2

    ok = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))

    class Allow(external_auth_pb2_grpc.AuthorizationServicer):
        async def Check(self, request: object, context: object) -> object:
            return ok

    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Allow(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def run_allow_server(port: int) -> None:
    import uvloop

    uvloop.install()
    asyncio.run(_allow_server(port))


def measure(name: str, port: int, seconds: float, conns: list[int]) -> dict[int, WrkResult]:
    script = post_script(order_body())
    wrk(f"http://127.0.0.1:{port}", 4, 1, script)  # warm up connections and caches
    out = {}
    for c in conns:
        r = wrk(f"http://127.0.0.1:{port}", c, seconds, script)
        out[c] = r
        print(f"  {name} c={c}: {r.rps:8.0f} req/s  p50 {r.p50_us:7.0f} µs  p99 "
              f"{r.p99_us:7.0f} µs  non-2xx {r.non2xx}  errors {r.errors}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="wrk duration per measurement")
    ap.add_argument("--allow-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.allow_server:
        run_allow_server(args.allow_server)
        return 0
    conns = [1, 16]
    results: dict[str, dict[int, WrkResult]] = {}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="meshward-bench-") as tmp, \
            EnvoyProcess(app_bootstrap(), name="app") as app:  # fmt: skip
        print(f"app (Envoy direct_response) on {app.port}; wrk {args.seconds:g}s per point")

        with EnvoyProcess(sidecar(app.port, "learn", keep=()), name="a") as e:
            results["a"] = measure("(a) envoy alone", e.port, args.seconds, conns)

        allow_port = free_port()
        allow = subprocess.Popen([sys.executable, __file__, "--allow-server", str(allow_port)],
                                 cwd=ROOT)  # fmt: skip
        try:
            time.sleep(1.0)
            boot = sidecar(app.port, "enforce", keep=(EXT_AUTHZ,), authz_port=allow_port)
            with EnvoyProcess(boot, name="b") as e:
                assert request(e.port, "/api/orders", order_body()) == 200
                results["b"] = measure("(b) always-allow grpc.aio", e.port, args.seconds, conns)
        finally:
            allow.terminate()
            allow.wait(10)

        mw = MeshwardServe(tmp)
        try:
            boot = sidecar(app.port, "enforce", keep=(EXT_AUTHZ,), authz_port=mw.authz)
            with EnvoyProcess(boot, name="c") as e:
                mw.api("PUT", "/api/v1/modes/bench", {"mode": "learn"})
                for i in range(60):
                    assert request(e.port, "/api/orders", order_body(i)) == 200
                mw.api("PUT", "/api/v1/modes/bench", {"mode": "enforce"})
                assert request(e.port, "/api/orders", order_body(7)) == 200, "learned not allowed"
                assert request(e.port, "/api/unknown") == 403, "enforce does not deny"
                results["c"] = measure("(c) meshward enforce", e.port, args.seconds, conns)
            checks = mw.metric('meshward_checks_total{result="ok"}')
            denied = mw.metric('meshward_checks_total{result="denied"}')
            print(f"  meshward answered {checks:.0f} checks OK, {denied:.0f} denied")
        finally:
            mw.stop()

        with EnvoyProcess(sidecar(app.port, "learn", keep=(), extra_filter=RBAC), name="d") as e:
            assert request(e.port, "/api/orders", order_body()) == 200
            assert request(e.port, "/api/unknown") == 403
            results["d"] = measure("(d) native RBAC", e.port, args.seconds, conns)

    print(f"\nadded over (a), same connections (run took {time.monotonic() - start:.0f} s):")
    print(f"{'':28}{'c':>3} {'+p50 µs':>9} {'+p99 µs':>9} {'req/s':>8} "
          f"{'+p50 vs b':>10} {'req/s vs b':>11}")
    names = {"b": "(b) always-allow grpc.aio", "c": "(c) meshward enforce", "d": "(d) native RBAC"}
    verdicts = []
    for c in conns:
        base = results["a"][c]
        b = results["b"][c]
        b_add = b.p50_us - base.p50_us
        print(f"{'(a) envoy alone':28}{c:>3} {0:>9.0f} {0:>9.0f} {base.rps:>8.0f}")
        for key, label in names.items():
            r = results[key][c]
            add50, add99 = r.p50_us - base.p50_us, r.p99_us - base.p99_us
            lat_ratio = add50 / b_add if b_add > 0 else float("nan")
            rps_ratio = r.rps / b.rps
            print(f"{label:28}{c:>3} {add50:>9.0f} {add99:>9.0f} {r.rps:>8.0f} "
                  f"{lat_ratio:>9.2f}x {rps_ratio:>10.2f}x")
            if key == "c":
                verdicts.append((c, lat_ratio, rps_ratio, r.non2xx + r.errors))
    for c, lat_ratio, rps_ratio, bad in verdicts:
        ok = lat_ratio <= 1.15 and rps_ratio >= 0.85 and bad == 0
        print(f"goal c={c}: (c) adds {lat_ratio:.2f}x (b)'s p50 (<= 1.15), keeps "
              f"{rps_ratio:.2f}x its req/s (>= 0.85), failed requests {bad}: "
              f"{'MET' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
