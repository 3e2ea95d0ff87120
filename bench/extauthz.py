"""ext_authz cost through a real Envoy 1.40, wrk at 1 and 16 connections (one run, ~2 minutes).

Every scenario sends the same request, POST /api/orders with a 1 KB JSON body, through one
sidecar (rendered by istio/bootstrap.py) to the same app (an Envoy direct_response):
  (a) Envoy alone (no meshward filter)
  (b) Envoy + ext_authz to an always-allow Python grpc.aio server (uvloop): the transport floor
  (c) Envoy + ext_authz to `meshward serve`, namespace in enforce, allowlist learned before
  (d) Envoy + native RBAC allowing exactly that method and path: the physical limit
  (e) Envoy + ext_authz to meshward's own gRPC server and CheckRequest conversion with the judge
      replaced by a constant allow: splits what (c) adds over (b) into meshward's server and
      conversion (e - b) and the judging itself, allowlist and inspection (c - e)
  (p) as (c) but plaintext, identities from the caller's hints: meshward before issue 11 (the
      in-process `unverified` policy; the CLI no longer offers it)
  (i) the Istio route: the sidecar -mTLS (its own certificate)-> meshward's own inbound sidecar
      (an Envoy as Istio configures it, tests/support/istio_sidecar.py) -plaintext + XFCC->
      `meshward serve --grpc-plaintext`; (i) - (c) is the extra hop
(b), (d), (e) are plaintext as before; (c) is serve's default, mTLS with the sidecar's certificate
(long-lived connections: one handshake per Envoy worker, not per request). The tap filter is left
out everywhere (bench/envoytap.py measures it). Added latency is p50/p99 minus (a)'s at the same
connection count; goals: (c) adds <= 1.15x the p50 (b) adds, and keeps >= 0.85x its requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envoy_harness import (
    ROOT,
    EnvoyProcess,
    MeshwardServe,
    WrkResult,
    app_bootstrap,
    free_port,
    order_body,
    post_script,
    request,
    run_allow_server,
    sidecar,
    wrk,
)

from meshward.istio.certs import MeshCA
from meshward.runtime.client import ApiClient
from tests.support.istio_sidecar import meshward_sidecar

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
                        {
                            "and_rules": {
                                "rules": [
                                    {
                                        "header": {
                                            "name": ":method",
                                            "string_match": {"exact": "POST"},
                                        }
                                    },
                                    {"url_path": {"path": {"exact": "/api/orders"}}},
                                ]
                            }
                        }
                    ],
                    "principals": [{"any": True}],
                }
            },
        },
    },
}


def run_floor_server(port: int) -> None:
    """Scenario (e): `meshward serve`'s Server as is, but every Check is answered allow without
    judging (the conversion to an Observation still runs)."""
    from meshward.app.serve import ServeConfig, Server, install_uvloop
    from meshward.core.observation import Verdict
    from meshward.runtime.grpcpeer import UNVERIFIED

    install_uvloop()
    allow = Verdict("allow", 0.0)

    async def serve() -> None:
        with tempfile.TemporaryDirectory(prefix="meshward-floor-") as tmp:
            config = ServeConfig(
                db=f"{tmp}/floor.db",
                listen_host="127.0.0.1",
                authz_port=port,
                tap_port=0,
                http_port=0,
                peers=UNVERIFIED,
            )
            server = Server(config)  # plaintext, as (b): the server's own cost
            server.check.judge = lambda obs: allow
            await server.start()
            gc.collect()
            gc.freeze()  # as serve_forever does
            await asyncio.Event().wait()

    asyncio.run(serve())


def run_plain_server(authz_port: int, http_port: int) -> None:
    """Scenario (p): the whole `meshward serve` as before issue 11: plaintext gRPC, the
    destination from the caller's hints (the `unverified` policy, in-process only)."""
    from meshward.app.serve import ServeConfig, install_uvloop, serve_forever
    from meshward.runtime.grpcpeer import UNVERIFIED

    install_uvloop()
    with tempfile.TemporaryDirectory(prefix="meshward-plain-") as tmp:
        config = ServeConfig(
            db=f"{tmp}/plain.db",
            listen_host="127.0.0.1",
            authz_port=authz_port,
            tap_port=0,
            http_port=http_port,
            peers=UNVERIFIED,
        )
        asyncio.run(serve_forever(config))


class PlainServe:
    """Scenario (p)'s server as a subprocess, with MeshwardServe's api()."""

    def __init__(self) -> None:
        self.authz, self.http = free_port(), free_port()
        self.token = secrets.token_urlsafe(32)  # its API token (MESHWARD_API_TOKEN)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--plain-server", f"{self.authz},{self.http}"],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT), MESHWARD_API_TOKEN=self.token),
            stderr=subprocess.DEVNULL,
        )

    def api(self, method: str, path: str, doc: object = None) -> object:
        return ApiClient(f"http://127.0.0.1:{self.http}", self.token).request(method, path, doc)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def learn_then_enforce(server: MeshwardServe | PlainServe, port: int) -> None:
    """Learn the allowlist through the sidecar on `port`, then enforce it."""
    server.api("PUT", "/api/v1/modes/bench", {"mode": "learn"})
    for i in range(60):
        assert request(port, "/api/orders", order_body(i)) == 200
    server.api("PUT", "/api/v1/modes/bench", {"mode": "enforce"})
    assert request(port, "/api/orders", order_body(7)) == 200, "learned, not allowed"
    assert request(port, "/api/unknown") == 403, "enforce does not deny"


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Until something accepts on the loopback port (the allow server has started)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.1)


def pin(servers: list[int], envoys: list[EnvoyProcess]) -> None:
    """Servers on the last CPU, Envoys and this process (hence wrk) on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    last, rest = str(cpus[-1]), ",".join(str(c) for c in cpus[:-1])
    for pid in servers:
        subprocess.run(["taskset", "-apc", last, str(pid)], check=True, capture_output=True)
    for e in envoys:
        assert e.proc is not None
        subprocess.run(["taskset", "-apc", rest, str(e.proc.pid)], check=True, capture_output=True)
    os.sched_setaffinity(0, {int(c) for c in rest.split(",")})
    print(f"pinned: ext_authz servers on CPU {last}; Envoy and wrk on CPU {rest}", flush=True)


def median_result(runs: list[WrkResult]) -> WrkResult:
    """Per-field median over the rounds (the machine is shared and noisy)."""

    def med(vals: list[float]) -> float:
        return statistics.median(vals)

    return WrkResult(
        rps=med([r.rps for r in runs]),
        p50_us=med([r.p50_us for r in runs]),
        p99_us=med([r.p99_us for r in runs]),
        requests=sum(r.requests for r in runs),
        non2xx=sum(r.non2xx for r in runs),
        errors=sum(r.errors for r in runs),
    )


NAMES = {
    "a": "(a) envoy alone",
    "b": "(b) always-allow grpc.aio",
    "c": "(c) meshward enforce",
    "d": "(d) native RBAC",
    "e": "(e) meshward, judge skipped",
    "p": "(p) meshward, plaintext",
    "i": "(i) meshward, Istio route",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="wrk duration per point")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (median taken)")
    ap.add_argument("--allow-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--plain-server", help=argparse.SUPPRESS)
    ap.add_argument(
        "--pin",
        action="store_true",
        help="give the Python ext_authz servers (b, c, e) the last CPU and Envoy + wrk the others, "
        "as in a cluster where meshward runs in its own pod rather than beside the sidecar",
    )
    args = ap.parse_args()
    if args.allow_server:
        run_allow_server(args.allow_server)
        return 0
    if args.floor_server:
        run_floor_server(args.floor_server)
        return 0
    if args.plain_server:
        authz_port, http_port = (int(p) for p in args.plain_server.split(","))
        run_plain_server(authz_port, http_port)
        return 0
    conns = [1, 16]
    script = post_script(order_body())
    start = time.monotonic()
    allow_port = free_port()
    allow = subprocess.Popen(
        [sys.executable, __file__, "--allow-server", str(allow_port)], cwd=ROOT
    )
    floor_port = free_port()
    floor = subprocess.Popen(
        [sys.executable, __file__, "--floor-server", str(floor_port)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    envoys: dict[str, EnvoyProcess] = {}
    with (
        tempfile.TemporaryDirectory(prefix="meshward-bench-") as tmp,
        EnvoyProcess(app_bootstrap(), name="app") as app,
    ):
        mw = MeshwardServe(tmp)
        plain = PlainServe()
        os.makedirs(f"{tmp}/istio")
        routed = MeshwardServe(f"{tmp}/istio", "--grpc-plaintext")
        mesh_ca = MeshCA(Path(tmp) / "mesh-ca")
        mw_sidecar = EnvoyProcess(
            meshward_sidecar(mesh_ca.issue("meshward", "meshward"), {"authz": routed.authz}),
            name="meshward-sidecar",
        ).start()
        envoys["meshward-sidecar"] = mw_sidecar
        try:
            wait_port(allow_port)
            wait_port(floor_port)
            wait_port(plain.http)
            authz = (EXT_AUTHZ,)
            boots = {
                "a": sidecar(app.port, "learn", keep=()),
                "b": sidecar(app.port, "enforce", keep=authz, authz_port=allow_port),
                "c": sidecar(
                    app.port, "enforce", keep=authz, authz_port=mw.authz, meshward_tls=mw.tls()
                ),
                "d": sidecar(app.port, "learn", keep=(), extra_filter=RBAC),
                "e": sidecar(app.port, "enforce", keep=authz, authz_port=floor_port),
                "p": sidecar(app.port, "enforce", keep=authz, authz_port=plain.authz),
                "i": sidecar(
                    app.port,
                    "enforce",
                    keep=authz,
                    authz_port=mw_sidecar.listener_ports["authz"],
                    meshward_tls=mesh_ca.issue("bench", "api"),
                ),
            }
            for key, boot in boots.items():
                envoys[key] = EnvoyProcess(boot, name=key).start()
            if args.pin:
                servers = [allow.pid, mw.proc.pid, floor.pid, plain.proc.pid, routed.proc.pid]
                pin(servers, [app, *envoys.values()])
            port = {k: envoys[k].port for k in boots}
            # (c), (p), (i): learn the allowlist through the same sidecar, then enforce it
            learn_then_enforce(mw, port["c"])
            learn_then_enforce(plain, port["p"])
            learn_then_enforce(routed, port["i"])
            assert request(port["d"], "/api/unknown") == 403, "RBAC does not deny"
            for key in boots:
                assert request(port[key], "/api/orders", order_body()) == 200, key
                wrk(f"http://127.0.0.1:{port[key]}", 4, 1, script)  # warm up
            print(
                f"app (Envoy direct_response) on {app.port}; {args.rounds} interleaved rounds "
                f"of wrk {args.seconds:g} s per scenario and connection count",
                flush=True,
            )
            runs: dict[tuple[str, int], list[WrkResult]] = {}
            for rnd in range(args.rounds):
                for c in conns:
                    for key in boots:
                        r = wrk(f"http://127.0.0.1:{port[key]}", c, args.seconds, script)
                        runs.setdefault((key, c), []).append(r)
                print(f"  round {rnd + 1}/{args.rounds} done", flush=True)
            checks = mw.metric('meshward_checks_total{result="ok"}')
            mean = mw.metric("meshward_check_seconds_sum") / max(
                mw.metric("meshward_check_seconds_count"), 1
            )
            print(
                f"meshward answered {checks:.0f} checks OK; mean time in its Check handler "
                f"{mean * 1e6:.0f} µs"
            )
        finally:
            for e in envoys.values():
                e.stop()
            for server in (mw, plain, routed):
                server.stop()
            for proc in (allow, floor):
                proc.terminate()
                proc.wait(10)

    results = {k: median_result(v) for k, v in runs.items()}
    print(
        f"\nmedians over {args.rounds} rounds; added = over (a) at the same connections "
        f"(run took {time.monotonic() - start:.0f} s):"
    )
    print(
        f"{'':28}{'c':>3} {'p50 µs':>8} {'p99 µs':>8} {'+p50 µs':>8} {'+p99 µs':>8} "
        f"{'req/s':>7} {'+p50 vs b':>10} {'req/s vs b':>11} {'failed':>7}"
    )
    verdicts = []
    for c in conns:
        base, b = results[("a", c)], results[("b", c)]
        b_add = b.p50_us - base.p50_us
        for key, label in NAMES.items():
            r = results[(key, c)]
            add50, add99 = r.p50_us - base.p50_us, r.p99_us - base.p99_us
            lat = add50 / b_add if b_add > 0 else float("nan")
            rps = r.rps / b.rps
            print(
                f"{label:28}{c:>3} {r.p50_us:>8.0f} {r.p99_us:>8.0f} {add50:>8.0f} "
                f"{add99:>8.0f} {r.rps:>7.0f} {lat:>9.2f}x {rps:>10.2f}x "
                f"{r.non2xx + r.errors:>7}"
            )
            if key == "c":
                verdicts.append((c, lat, rps, r.non2xx + r.errors))
    for c in conns:
        b, c_, e = (results[(k, c)].p50_us for k in "bce")
        print(
            f"c={c}: of the {c_ - b:.0f} µs p50 that (c) adds over (b), meshward's server and "
            f"conversion take {e - b:.0f} µs (e - b), judging {c_ - e:.0f} µs (c - e)"
        )
    for c in conns:
        # the platform's round-to-round noise is as large as the effect: show every round
        per_round = []
        for rnd in range(args.rounds):
            a_, b_, c_ = (runs[(k, c)][rnd].p50_us for k in "abc")
            if b_ > a_:
                per_round.append((c_ - a_) / (b_ - a_))
        if per_round:
            print(
                f"c={c}: (c) adds x (b)'s added p50, per round: "
                f"{', '.join(f'{x:.2f}' for x in per_round)} "
                f"(spread {min(per_round):.2f}-{max(per_round):.2f})"
            )
    for c in conns:
        # mTLS on serve's ports: (c) against (p), meshward before issue 11, round by round
        added, extra, rates, hops, hop_rates = [], [], [], [], []
        for rnd in range(args.rounds):
            a_, c_, p_, i_ = (runs[(k, c)][rnd] for k in "acpi")
            if p_.p50_us > a_.p50_us:
                added.append((c_.p50_us - a_.p50_us) / (p_.p50_us - a_.p50_us))
            extra.append(c_.p50_us - p_.p50_us)
            rates.append(c_.rps / p_.rps)
            hops.append(i_.p50_us - c_.p50_us)
            hop_rates.append(i_.rps / c_.rps)
        print(
            f"c={c}: mTLS (c) vs plaintext (p): p50 {_spread(extra, ' µs')}, added p50 "
            f"x{_spread(added)}, req/s x{_spread(rates)}"
        )
        print(
            f"c={c}: Istio route (i) vs (c): p50 {_spread(hops, ' µs')}, "
            f"req/s x{_spread(hop_rates)}"
        )
    for c, lat, rps, bad in verdicts:
        ok = lat <= 1.15 and rps >= 0.85 and bad == 0
        print(
            f"goal c={c}: (c) adds {lat:.2f}x the p50 (b) adds (<= 1.15), keeps {rps:.2f}x "
            f"its req/s (>= 0.85), failed requests {bad}: {'MET' if ok else 'NOT MET'}"
        )
    return 0


def _spread(values: list[float], unit: str = "") -> str:
    """median (per round: v1, v2, ...; spread lo to hi): ratios, or signed µs with `unit`."""
    if not values:
        return "n/a"

    def fmt(v: float) -> str:
        return f"{v:+.0f}" if unit else f"{v:.2f}"

    rounds = ", ".join(fmt(v) for v in values)
    low, high = fmt(min(values)), fmt(max(values))
    median = fmt(statistics.median(values))
    return f"{median}{unit} (per round: {rounds}; spread {low} to {high}{unit})"


if __name__ == "__main__":
    sys.exit(main())
