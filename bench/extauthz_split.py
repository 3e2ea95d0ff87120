"""Where meshward's Check time goes at one connection: serial Check round trips, no Envoy.

bench/extauthz.py measures through Envoy and wrk, where two identical servers differ by ±50 µs
from round to round. This one calls Check directly from a gRPC client on one CPU to servers on
the other, one call at a time with an idle gap between calls (as at one connection through
Envoy, where the server idles while Envoy, the app and wrk run), which resolves a few µs:
  allow        an always-allow grpc.aio server (bench/extauthz.py's (b)): the baseline
  serve-noop   `meshward serve`'s Server (all its gRPC and HTTP servers, options, handlers) with
               the Check handler answering OK at once: the cost of the server itself
  serve-skip   the real Check handler, the judge replaced by a constant allow: plus the
               conversion to an Observation, the metrics and the pipeline's entry
  serve        the real thing: enforce, allowlist learned from 60 requests, level-1 detectors,
               plaintext with the destination from the hints (meshward before issue 11)
  serve-mtls   the same over mTLS (serve's default): the client presents a sidecar certificate
               from serve's CA, serve takes the destination from it (one long-lived connection:
               the handshake is not per call)

Every variant gets the same 1 KB JSON POST (bench/extauthz.py's order) as a CheckRequest.
Run: .venv/bin/python bench/extauthz_split.py [--calls N] [--rounds N] [--gap-us N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/: its extauthz.py would hide the extauthz package

from envoy.service.auth.v3 import external_auth_pb2  # noqa: E402

VARIANTS = ("allow", "serve-noop", "serve-skip", "serve", "serve-mtls")
CA_ENV = "MESHWARD_BENCH_CA"  # the CA directory serve-mtls uses (made by main)
NAMESPACE = "bench"


def check_bytes(i: int) -> bytes:
    """A CheckRequest as Envoy's ext_authz filter sends it for POST /api/orders (order i)."""
    from bench.envoy_harness import order_body

    req = external_auth_pb2.CheckRequest()
    a = req.attributes
    a.source.principal = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/web"
    a.source.address.socket_address.address = "127.0.0.1"
    a.source.address.socket_address.port_value = 40000 + i
    a.destination.principal = f"spiffe://cluster.local/ns/{NAMESPACE}/sa/orders"
    a.destination.address.socket_address.address = "127.0.0.1"
    a.destination.address.socket_address.port_value = 8080
    a.context_extensions["namespace"] = NAMESPACE
    a.context_extensions["workload"] = "orders"
    http = a.request.http
    body = order_body(i)
    http.id, http.method, http.path, http.host = str(i), "POST", "/api/orders", "orders:8080"
    http.scheme, http.protocol, http.raw_body, http.size = "http", "HTTP/1.1", body, len(body)
    for k, v in (
        (":authority", "orders:8080"),
        (":path", "/api/orders"),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("user-agent", "wrk"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", f"0b1c2d3e-4f50-6172-8394-{i:012d}"),
        ("accept", "*/*"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        ("x-b3-traceid", f"{i:016x}"),
    ):
        http.header_map.headers.add(key=k, raw_value=v.encode())
    return req.SerializeToString()


def run_server(variant: str, port: int) -> None:
    """One variant on 127.0.0.1:port until killed."""
    import uvloop

    from bench.envoy_harness import always_allow
    from meshward.app.serve import ServeConfig, Server
    from meshward.core.observation import Verdict
    from meshward.extauthz.convert import OK_BYTES, check_to_observation
    from meshward.runtime.grpcpeer import UNVERIFIED, PeerPolicy

    uvloop.install()

    async def serve() -> None:
        if variant == "allow":
            await always_allow(port)
            return
        with tempfile.TemporaryDirectory(prefix="meshward-split-") as tmp:
            mtls = variant == "serve-mtls"
            config = ServeConfig(
                db=f"{tmp}/split.db",
                listen_host="127.0.0.1",
                authz_port=port,
                tap_port=0,
                http_port=0,
                peers=PeerPolicy() if mtls else UNVERIFIED,
                grpc_ca_dir=os.environ[CA_ENV] if mtls else "",
            )
            srv = Server(config)
            if variant == "serve-noop":

                async def answer_ok(req: object, context: object) -> bytes:
                    return OK_BYTES

                srv.check.check = answer_ok  # type: ignore[method-assign]
            elif variant == "serve-skip":
                allow = Verdict("allow", 0.0)
                srv.check.judge = lambda obs: allow
            else:
                for i in range(60):
                    obs = check_to_observation(
                        external_auth_pb2.CheckRequest.FromString(check_bytes(i))
                    )
                    srv.engine.evaluate(obs, mode="learn")
                srv.engine.set_mode(NAMESPACE, "enforce")
            await srv.start()
            gc.collect()
            gc.freeze()  # as serve_forever does
            await asyncio.Event().wait()

    asyncio.run(serve())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=600, help="calls per variant and round")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    ap.add_argument(
        "--gap-us",
        type=float,
        default=600.0,
        help="idle time between calls (µs), as at one connection through Envoy",
    )
    ap.add_argument("--server", nargs=2, metavar=("VARIANT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        run_server(args.server[0], int(args.server[1]))
        return 0
    import grpc

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("needs 2 CPUs: the servers on the last, the client on the others", file=sys.stderr)
        return 2
    from meshward.istio.certs import MeshCA

    ca_tmp = tempfile.TemporaryDirectory(prefix="meshward-split-ca-")
    ca = MeshCA(Path(ca_tmp.name) / "ca")
    sidecar = ca.issue(NAMESPACE, "orders", out=Path(ca_tmp.name) / "issued")
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{CA_ENV: str(ca.dir)})
    ports = {v: free_port() for v in VARIANTS}
    procs = [
        subprocess.Popen(
            ["taskset", "-c", str(cpus[-1]), sys.executable, __file__, "--server", v, str(port)],
            cwd=ROOT,
            env=env,
        )
        for v, port in ports.items()
    ]
    os.sched_setaffinity(0, set(cpus[:-1]))
    try:
        requests = [check_bytes(1000 + i) for i in range(200)]
        calls = {}
        for v, port in ports.items():
            if v == "serve-mtls":
                creds = grpc.ssl_channel_credentials(
                    Path(sidecar.ca_cert).read_bytes(),
                    Path(sidecar.private_key).read_bytes(),
                    Path(sidecar.cert_chain).read_bytes(),
                )
                options = [("grpc.ssl_target_name_override", "localhost")]
                channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options)
            else:
                channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=60)
            calls[v] = channel.unary_unary(
                "/envoy.service.auth.v3.Authorization/Check",
                request_serializer=None,
                response_deserializer=external_auth_pb2.CheckResponse.FromString,
            )
            answer = calls[v](requests[0])
            assert answer.status.code == 0, (v, answer)  # OK: Envoy lets the request through
        gap = args.gap_us / 1e6
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        by_round: dict[str, list[float]] = {v: [] for v in VARIANTS}  # each round's median
        for _ in range(args.rounds):
            for v in VARIANTS:
                start = len(times[v])
                call = calls[v]
                for i in range(args.calls):
                    until = time.perf_counter() + gap
                    while time.perf_counter() < until:  # the client's CPU stays busy, as wrk's
                        pass
                    t0 = time.perf_counter()
                    call(requests[i % len(requests)])
                    times[v].append((time.perf_counter() - t0) * 1e6)
                by_round[v].append(statistics.median(times[v][start:]))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        ca_tmp.cleanup()
    base = statistics.median(times["allow"])
    print(
        f"serial Check round trips, {args.rounds} rounds x {args.calls} calls per variant, "
        f"{args.gap_us:.0f} µs idle between calls; servers on CPU {cpus[-1]}"
    )
    print(f"  {'variant':12} {'p50 µs':>8} {'p90 µs':>8} {'p50 - allow':>12} {'vs allow':>9}")
    for v in VARIANTS:
        xs = sorted(times[v])
        p50, p90 = statistics.median(xs), xs[int(len(xs) * 0.9)]
        print(f"  {v:12} {p50:8.0f} {p90:8.0f} {p50 - base:+12.0f} {p50 / base:8.2f}x")
    med = {v: statistics.median(times[v]) for v in VARIANTS}
    print(
        f"meshward adds {med['serve'] - base:.0f} µs per Check over always-allow: the server "
        f"{med['serve-noop'] - base:.0f} µs, conversion and pipeline entry "
        f"{med['serve-skip'] - med['serve-noop']:.0f} µs, judging "
        f"{med['serve'] - med['serve-skip']:.0f} µs"
    )
    added = [m - p for m, p in zip(by_round["serve-mtls"], by_round["serve"], strict=True)]
    ratio = [
        (m - a) / (p - a)
        for m, p, a in zip(
            by_round["serve-mtls"], by_round["serve"], by_round["allow"], strict=True
        )
        if p > a
    ]
    print(
        f"mTLS adds {statistics.median(added):+.0f} µs p50 per Check (per round: "
        f"{', '.join(f'{x:+.0f}' for x in added)}; spread {min(added):+.0f} to {max(added):+.0f})"
    )
    if ratio:
        print(
            f"serve-mtls adds x{statistics.median(ratio):.2f} what serve adds over allow (per "
            f"round: {', '.join(f'{x:.2f}' for x in ratio)}; spread {min(ratio):.2f} to "
            f"{max(ratio):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
