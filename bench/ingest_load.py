"""Check latency while 16 MB ingest batches arrive: p50/p99 without and with, and the ratio.

A real `meshward serve` (the default detectors, a SQLite store) runs in its own process. This
process sends ext_authz Checks one after another over one gRPC connection, paced, and times
each; a third process posts ~16 MB JSON Lines batches (10,000 observations) back to back to
`POST /api/v1/observations` during the "with ingest" phases. Phases alternate (without, with,
without, with, ...) so machine noise hits both; the ratio is per round and overall. Goal (issue
#11): Check p99 with ingest <= 1.2x its baseline.

Run: .venv/bin/python bench/ingest_load.py [--rounds 2] [--seconds 6]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from meshward.runtime.client import ApiClient
from tests.support.ingest import big_batch
from tests.support.serve import check_request

GOAL = 1.2
TOKEN = "bench-ingest-load-token"  # the API token of the bench's own serve (loopback only)


def serve(db: str, ports: Connection, stop: multiprocessing.synchronize.Event) -> None:
    """The server process: a whole serve on loopback ephemeral ports until `stop`."""
    import asyncio
    import gc

    from meshward.app.auth import AuthConfig
    from meshward.app.serve import ServeConfig, Server, install_uvloop
    from meshward.runtime.grpcpeer import UNVERIFIED

    async def main() -> None:
        cfg = ServeConfig(
            db=db,
            listen_host="127.0.0.1",
            authz_port=0,
            tap_port=0,
            http_port=0,
            auth=AuthConfig(token=TOKEN),
            peers=UNVERIFIED,  # plaintext gRPC: what is measured is ingest, not the handshake
        )
        server = Server(cfg)
        await server.start()
        ports.send(dict(server.ports))
        gcs: dict[int, list[float]] = {0: [], 1: [], 2: []}
        lags: list[float] = []
        started: list[float] = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                gcs[info["generation"]].append((time.perf_counter() - started[0]) * 1000)

        if os.environ.get("INGEST_LOAD_PROBE"):
            gc.callbacks.append(timed)
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append((time.perf_counter() - t0 - 0.005) * 1000)
        if os.environ.get("INGEST_LOAD_PROBE"):
            for gen, took in gcs.items():
                if took:
                    print(
                        f"gc gen{gen}: {len(took)} collections, max {max(took):.1f} ms, "
                        f"total {sum(took):.0f} ms, >5 ms: {sum(t > 5 for t in took)}"
                    )
            lags.sort()
            print(
                f"loop lag: p99 {lags[int(len(lags) * 0.99)]:.1f} ms max {lags[-1]:.1f} ms, "
                f">10 ms: {sum(x > 10 for x in lags)} of {len(lags)}"
            )
        await server.stop(grace=0.2)

    install_uvloop()
    asyncio.run(main())


def ingest(http_port: int, go: multiprocessing.synchronize.Event, done: Connection) -> None:
    """The ingest process: 16 MB batches back to back while `go` is set; reports the count."""
    os.nice(10)  # it stands for a node tap on another machine: not the server's CPU
    raw = big_batch()
    api = ApiClient(f"http://127.0.0.1:{http_port}", token=TOKEN, timeout=120)
    while True:
        go.wait()
        sent, seconds = 0, []
        while go.is_set():
            t0 = time.perf_counter()
            api.post_observations(raw)
            seconds.append(time.perf_counter() - t0)
            sent += 1
        done.send((sent, len(raw), seconds))


def checks(
    stub: external_auth_pb2_grpc.AuthorizationStub, seconds: float, gap: float
) -> list[float]:
    """Checks one at a time for `seconds`, `gap` apart: each one's latency in ms."""
    req = check_request("GET", "/api/items?page=1", request_id="")
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        stub.Check(req, timeout=5)
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(gap)
    return out


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    ap.add_argument("--gap", type=float, default=0.002, help="seconds between two Checks")
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        stop = ctx.Event()
        ports_rx, ports_tx = ctx.Pipe(duplex=False)
        server = ctx.Process(target=serve, args=(str(Path(tmp) / "m.db"), ports_tx, stop))
        server.start()
        ports = ports_rx.recv()
        go = ctx.Event()
        done_rx, done_tx = ctx.Pipe(duplex=False)
        poster = ctx.Process(target=ingest, args=(ports["http"], go, done_tx), daemon=True)
        poster.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['authz']}")
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        checks(stub, 1.0, args.gap)  # warm up: connection, detectors, the first profile
        api = ApiClient(f"http://127.0.0.1:{ports['http']}", token=TOKEN)
        api.post_observations(big_batch(10))  # and the ingest worker, started by a first batch
        base_all: list[float] = []
        load_all: list[float] = []
        print(f"Check latency, {args.rounds} rounds of {args.seconds:.0f} s per phase")
        print(f"{'round':>5} {'phase':<16} {'checks':>7} {'p50 ms':>8} {'p99 ms':>8}  batches")
        ratios = []
        for r in range(1, args.rounds + 1):
            base = checks(stub, args.seconds, args.gap)
            go.set()
            load = checks(stub, args.seconds, args.gap)
            go.clear()
            sent, size, took = done_rx.recv()
            base_all += base
            load_all += load
            ratios.append(pct(load, 99) / pct(base, 99))
            print(
                f"{r:>5} {'without ingest':<16} {len(base):>7} {pct(base, 50):>8.2f} "
                f"{pct(base, 99):>8.2f}"
            )
            took_s = f"{statistics.median(took):.2f} s median" if took else "-"
            print(
                f"{r:>5} {'with ingest':<16} {len(load):>7} {pct(load, 50):>8.2f} "
                f"{pct(load, 99):>8.2f}  {sent} x {size / 1e6:.1f} MB ({took_s} each)"
            )
        channel.close()
        stop.set()
        server.join(30)
        poster.kill()
    p50 = pct(load_all, 50) / pct(base_all, 50)
    p99 = pct(load_all, 99) / pct(base_all, 99)
    print(
        f"all rounds: p50 {pct(base_all, 50):.2f} -> {pct(load_all, 50):.2f} ms ({p50:.2f}x), "
        f"p99 {pct(base_all, 99):.2f} -> {pct(load_all, 99):.2f} ms ({p99:.2f}x)"
    )
    print(f"per-round p99 ratio: {min(ratios):.2f}x .. {max(ratios):.2f}x")
    print(
        f"goal: Check p99 with 16 MB ingests <= {GOAL}x baseline: "
        f"{'met' if p99 <= GOAL else 'NOT met'} ({p99:.2f}x)"
    )


if __name__ == "__main__":
    main()
