"""Check latency while 16 MB ingest batches arrive: p50/p99 without and with, and the ratio.

A real `meshward serve` (the default detectors, a SQLite store) runs in its own process. This
process sends ext_authz Checks one after another over one gRPC connection, paced, and times
each; a third process posts ~16 MB JSON Lines batches (10,000 observations) back to back to
`POST /api/v1/observations` during the "with ingest" phases. Phases alternate (without, with,
without, with, ...) so machine noise hits both; the p50 and p99 ratios are per round, the medians
of the rounds' percentiles per phase, and the pooled ratio overall. Goal (issue #11): Check p99
with ingest <= 1.2x its baseline.

To find where the Checks' time goes: `--probe` prints the CPU each process (and serve's event
loop thread) used per phase, how long that thread waited runnable on a run queue, its lag (how
late a 5 ms timer fires) without and with ingest, its garbage collections, and the CPU one
batch costs serve's loop and the worker (from a with-ingest phase's start until its last batch
was judged, less what the phase before used in as long, per batch sent: steadier than the
ratio on a loaded machine). `--rt` runs serve and the Check client SCHED_FIFO (root), ahead of
the machine's other tenants. `--control spin` (or `parse`, `hold`) sends the same batches to a
stand-in that is not serve: it reads each body and then spends about a second of CPU at
SCHED_IDLE (a busy loop; parsing a few lines again and again; or parsing the whole body, keeping
its objects and walking them, as the worker holds a batch; or `judge`: the worker's own code on
the batch, outside serve): what that CPU alone, spent anywhere on the machine, does to the
Checks. `--control sink` reads each body and answers at once: what moving 16 MB over loopback
to some process (the kernel's copies, softirqs) costs the Checks with no work done on it.

`--control none` posts nothing in the "with ingest" phases: both phases are the same, so the
ratio it prints is the bench's own noise on this machine (an A/A run). Each run also prints a
bootstrap interval of the pooled p99 ratio (rounds resampled): with few rounds it is wide.

`--client-cpu 0` keeps the Check client (this process) on CPU 0 in both phases. In a cluster
the calling sidecar runs in another pod, usually on another node: it never competes with serve's
ingest worker for its CPU (`serve --ingest-cpu auto` puts the worker on the highest CPU, on 2
CPUs CPU 1). Without the flag the client floats over both CPUs of this machine and wakes on the
worker's too, which no deployment does; both settings are reported in docs/benchmarks.md.

`--every 3.6` paces the batches (one starting every 3.6 s at most): a server that judges them
faster takes more of them per phase back to back, so its Checks see more ingest CPU per second;
paced, two servers are compared at the same batch rate.

Run: .venv/bin/python bench/ingest_load.py [--rounds 2] [--seconds 6] [--probe] [--rt]
     [--control spin|parse|hold|judge|sink|none] [--every SECONDS] [--share FRACTION]
     [--ingest-cpu auto|off|N] [--client-cpu N]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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
CLK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid`, by thread id (/proc)."""
    out: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK
    return out


def children(pid: int) -> list[int]:
    """The child processes of `pid` (the ingest worker, for serve)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    return out


def run_wait(pid: int, tid: int) -> float:
    """Seconds thread `tid` of `pid` has waited on a run queue: runnable, not running."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return 0.0


class CpuProbe:
    """CPU seconds per phase of: serve's loop thread, serve's other threads, the ingest worker,
    the load generator and this process (the Check client)."""

    def __init__(self, serve: int, poster: int) -> None:
        self.pids = {"serve": serve, "poster": poster, "client": os.getpid()}
        self.rows: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
        self.per_batch = {"serve loop": 0.0, "worker": 0.0}  # summed over the batches sent
        self.sent = 0

    def sample(self) -> dict[str, float]:
        serve = thread_cpu(self.pids["serve"])
        loop = serve.pop(self.pids["serve"], 0.0)
        worker = sum(sum(thread_cpu(c).values()) for c in children(self.pids["serve"]))
        return {
            "serve loop": loop,
            "serve threads": sum(serve.values()),
            "worker": worker,
            "poster": sum(thread_cpu(self.pids["poster"]).values()),
            "client": sum(thread_cpu(self.pids["client"]).values()),
            # runnable but not running: what a Check arriving then waits for
            "loop runq wait": run_wait(self.pids["serve"], self.pids["serve"]),
        }

    def phase(self, name: str, before: dict[str, float], seconds: float) -> None:
        after = self.sample()
        self.rows[name].append({k: (after[k] - before[k]) / seconds for k in after})

    def batches(self, before: dict[str, float], seconds: float, sent: int) -> None:
        """The CPU of `sent` batches: from the with-ingest phase's start until the last batch
        was answered (judged), less what the phase before used in as long without ingest."""
        after, idle = self.sample(), self.rows["without"][-1]
        for k in ("serve loop", "worker"):
            self.per_batch[k] += after[k] - before[k] - idle[k] * seconds
        self.sent += sent

    def report(self) -> None:
        print("CPU per phase (cores busy, median of rounds):")
        for name, rows in self.rows.items():
            cols = ", ".join(f"{k} {statistics.median(r[k] for r in rows):.2f}" for k in rows[0])
            print(f"  {name + ' ingest':<16} {cols}")
        if self.sent:
            loop, worker = (self.per_batch[k] / self.sent for k in ("serve loop", "worker"))
            print(
                f"CPU per 16 MB batch ({self.sent} batches): serve loop {loop:.3f} s, "
                f"ingest worker {worker:.3f} s"
            )


def isolate(rt: bool) -> None:
    """With `rt`, this thread (and the threads it starts, not its child processes) runs
    SCHED_FIFO: ahead of every other tenant of a shared machine, as if it had a core of its own
    (Linux, root). Child processes start as ordinary ones (SCHED_RESET_ON_FORK): serve's ingest
    worker then drops to SCHED_IDLE as always, the load generator stays at niceness 10."""
    if rt:
        policy = os.SCHED_FIFO | getattr(os, "SCHED_RESET_ON_FORK", 0)
        os.sched_setscheduler(0, policy, os.sched_param(1))


def serve(
    db: str,
    ports: Connection,
    stop: multiprocessing.synchronize.Event,
    ingesting: multiprocessing.synchronize.Event,
    rt: bool = False,
    probe: bool = False,
    share: float | None = None,
    cpu: str | None = None,
) -> None:
    """The server process: a whole serve on loopback ephemeral ports until `stop`. With `probe`,
    it prints its event loop's lag (how late a 5 ms timer fires: what a Check's callback waits
    for) without and with ingest (`ingesting`), and its garbage collections."""
    import asyncio
    import gc

    isolate(rt)

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
        if share is not None:
            cfg.ingest_share = share
        if cpu is not None:
            cfg.ingest_cpu = cpu
        server = Server(cfg)
        await server.start()
        ports.send(dict(server.ports))
        gcs: dict[int, list[float]] = {0: [], 1: [], 2: []}
        lags: dict[bool, list[float]] = {False: [], True: []}
        started: list[float] = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                gcs[info["generation"]].append((time.perf_counter() - started[0]) * 1000)

        if probe:
            gc.callbacks.append(timed)
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            lags[ingesting.is_set()].append((time.perf_counter() - t0 - 0.005) * 1000)
        if probe:
            for gen, took in gcs.items():
                if took:
                    print(
                        f"gc gen{gen}: {len(took)} collections, max {max(took):.1f} ms, "
                        f"total {sum(took):.0f} ms, >5 ms: {sum(t > 5 for t in took)}"
                    )
            for phase, lag in lags.items():
                if len(lag) > 100:
                    print(
                        f"loop lag {'with' if phase else 'without'} ingest: "
                        f"p50 {pct(lag, 50):.2f} p99 {pct(lag, 99):.2f} max {max(lag):.1f} ms, "
                        f">10 ms: {sum(x > 10 for x in lag)} of {len(lag)}"
                    )
        await server.stop(grace=0.2)

    install_uvloop()
    asyncio.run(main())


def worker_stand_in() -> Callable[[bytes], None]:
    """serve's ingest worker's two calls on a batch (parse and prepare; judge against a
    snapshot of a serve-like engine), in this process: bench/ingest_loop.py's way."""
    import pickle

    from meshward.app import batchjudge, ingest, sigcache
    from meshward.app.batchapply import BatchDoor
    from meshward.app.pipeline import Pipeline
    from meshward.core.engine import Engine, EngineConfig
    from meshward.runtime.metrics import Metrics
    from meshward.tap.envoy.join import Joiner

    config = EngineConfig()
    ingest._engine = Engine(config, sigcache.detector(config))
    engine = Engine(config, sigcache.detector(config))
    door = BatchDoor(engine, Metrics(), Joiner(), Pipeline(engine, Metrics(), Joiner()))
    batches = itertools.count()

    def judge(raw: bytes) -> None:
        batch = next(batches)
        parsed = ingest.parse(raw, batch)
        assert parsed.outline is not None
        snapshot = pickle.loads(pickle.dumps(door.snapshot(parsed.outline)))
        door.apply(pickle.loads(pickle.dumps(ingest.judge_kept(batch, snapshot))))
        door.close()
        batchjudge.forget(batch)

    return judge


def control(work: str, port: Connection) -> None:
    """Not serve: answers each POST after reading its body and spending about a second of CPU
    at SCHED_IDLE on `work` (spin: a busy loop; parse: the body's first 500 lines through
    json.loads, again and again; hold: every line parsed and kept, then walked again and again,
    a working set the size of the batch's objects as the worker holds them; judge: what serve's
    ingest worker does with a batch, the same code, run here instead, once per batch; sink:
    nothing, the body read and answered at once: what receiving 16 MB alone costs)."""
    import json
    from http.server import BaseHTTPRequestHandler, HTTPServer

    os.nice(10)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    judge = worker_stand_in() if work == "judge" else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            left = int(self.headers["Content-Length"])
            parts = []
            while left:
                parts.append(self.rfile.read(min(left, 1 << 20)))
                left -= len(parts[-1])
            if judge is not None:
                judge(b"".join(parts))
                parts = []
            lines = b"".join(parts).splitlines()
            end = time.perf_counter() + (0.0 if judge is not None or work == "sink" else 1.0)
            kept = [json.loads(line) for line in lines] if work == "hold" else []
            while time.perf_counter() < end:
                if work == "parse":
                    [json.loads(line) for line in lines[:500]]
                elif work == "hold":  # walk the whole batch's objects again and again
                    sum(len(v) for item in kept for v in item.values() if isinstance(v, str))
            answer = b'{"accepted": 0, "rejected": 0}'
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    port.send(httpd.server_address[1])
    httpd.serve_forever()


def ingest(
    http_port: int, go: multiprocessing.synchronize.Event, done: Connection, every: float = 0.0
) -> None:
    """The ingest process: 16 MB batches back to back while `go` is set (with `every`, one
    starting every `every` seconds at most); reports the count."""
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
            while go.is_set() and time.perf_counter() - t0 < every:
                time.sleep(0.01)
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


def interval(
    samples: list[tuple[list[float], list[float]]], draws: int = 400, seed: int = 1
) -> tuple[float, float]:
    """90 % bootstrap interval of the pooled p99 ratio: whole rounds resampled (a round's
    Checks share its moment's machine noise, so they are not independent draws)."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        picked = rng.choices(samples, k=len(samples))
        base = [x for b, _ in picked for x in b]
        load = [x for _, w in picked for x in w]
        ratios.append(pct(load, 99) / pct(base, 99))
    ratios.sort()
    return ratios[int(draws * 0.05)], ratios[int(draws * 0.95) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    ap.add_argument("--gap", type=float, default=0.002, help="seconds between two Checks")
    ap.add_argument(
        "--share",
        type=float,
        help="serve --ingest-share: the fraction of one CPU the ingest worker may use while "
        "Checks flow (default: serve's)",
    )
    ap.add_argument(
        "--ingest-cpu",
        help="serve --ingest-cpu: auto (the worker on a CPU of its own, serve's threads off "
        "it while a batch is in the worker), off, or a CPU number (default: serve's)",
    )
    ap.add_argument(
        "--probe", action="store_true", help="also CPU per process and thread per phase (/proc)"
    )
    ap.add_argument(
        "--rt",
        action="store_true",
        help="serve and the Check client SCHED_FIFO (root): ahead of the machine's other "
        "tenants, as if on cores of their own; the ingest worker and the load generator not",
    )
    ap.add_argument(
        "--client-cpu",
        type=int,
        help="run the Check client (this process's gRPC threads) on this CPU only, in both "
        "phases: in a cluster the calling sidecar is on another node, never on the ingest "
        "worker's CPU (with --ingest-cpu auto on 2 CPUs: 0)",
    )
    ap.add_argument(
        "--control",
        choices=("spin", "parse", "hold", "judge", "sink", "none"),
        help="post the batches to a stand-in that spends ~1 s of SCHED_IDLE CPU per batch "
        "instead of serve (serve still answers the Checks); sink: one that only reads them; "
        "none: post nothing (A/A: the bench's own noise)",
    )
    ap.add_argument(
        "--every",
        type=float,
        default=0.0,
        help="start a batch at most every EVERY seconds (default: back to back), to compare "
        "servers that judge batches at different speeds at the same batch rate",
    )
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        stop = ctx.Event()
        ports_rx, ports_tx = ctx.Pipe(duplex=False)
        isolate(args.rt)  # the Check client (and the gRPC threads it starts)
        go = ctx.Event()
        server = ctx.Process(
            target=serve,
            args=(
                str(Path(tmp) / "m.db"),
                *(ports_tx, stop, go, args.rt, args.probe, args.share, args.ingest_cpu),
            ),
        )
        server.start()
        ports = ports_rx.recv()
        target = ports["http"]
        if args.control not in (None, "none"):
            control_rx, control_tx = ctx.Pipe(duplex=False)
            ctx.Process(target=control, args=(args.control, control_tx), daemon=True).start()
            target = control_rx.recv()
        done_rx, done_tx = ctx.Pipe(duplex=False)
        poster = ctx.Process(target=ingest, args=(target, go, done_tx, args.every), daemon=True)
        poster.start()
        posting = args.control != "none"
        if args.client_cpu is not None:  # after the children started: they keep every CPU
            os.sched_setaffinity(0, {args.client_cpu})
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['authz']}")
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        checks(stub, 1.0, args.gap)  # warm up: connection, detectors, the first profile
        api = ApiClient(f"http://127.0.0.1:{ports['http']}", token=TOKEN, timeout=120)
        api.post_observations(big_batch(10))  # and the ingest worker, started by a first batch
        base_all: list[float] = []
        load_all: list[float] = []
        print(f"Check latency, {args.rounds} rounds of {args.seconds:.0f} s per phase")
        print(
            f"{'round':>5} {'phase':<16} {'checks':>7} {'p50 ms':>8} {'p99 ms':>8}  "
            "ratio p50/p99, batches"
        )
        ratios = []
        rounds: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
        samples: list[tuple[list[float], list[float]]] = []  # (without, with) per round
        probe = None
        if args.probe and server.pid and poster.pid:
            probe = CpuProbe(server.pid, poster.pid)
        for r in range(1, args.rounds + 1):
            t0 = probe.sample() if probe else {}
            base = checks(stub, args.seconds, args.gap)
            if probe:
                probe.phase("without", t0, args.seconds)
                t0 = probe.sample()
            if posting:
                go.set()
            started = time.perf_counter()
            load = checks(stub, args.seconds, args.gap)
            go.clear()
            if probe:
                probe.phase("with", t0, args.seconds)
            sent, size, took = done_rx.recv() if posting else (0, 0, [])  # all answered
            if probe:
                probe.batches(t0, time.perf_counter() - started, sent)
            base_all += base
            load_all += load
            samples.append((base, load))
            ratios.append(pct(load, 99) / pct(base, 99))
            rounds["without"].append((pct(base, 50), pct(base, 99)))
            rounds["with"].append((pct(load, 50), pct(load, 99)))
            print(
                f"{r:>5} {'without ingest':<16} {len(base):>7} {pct(base, 50):>8.2f} "
                f"{pct(base, 99):>8.2f}"
            )
            took_s = f"{statistics.median(took):.2f} s median" if took else "-"
            print(
                f"{r:>5} {'with ingest':<16} {len(load):>7} {pct(load, 50):>8.2f} "
                f"{pct(load, 99):>8.2f}  {pct(load, 50) / pct(base, 50):.2f}x/{ratios[-1]:.2f}x, "
                f"{sent} x {size / 1e6:.1f} MB ({took_s} each)"
            )
        for phase, rows in rounds.items():
            print(
                f"  median {phase + ' ingest':<16} p50 "
                f"{statistics.median(p for p, _ in rows):.2f}, p99 "
                f"{statistics.median(p for _, p in rows):.2f} ms"
            )
        if probe:
            probe.report()
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
    print(
        f"per-round p99 ratio: median {statistics.median(ratios):.2f}x, "
        f"{min(ratios):.2f}x .. {max(ratios):.2f}x"
    )
    low, high = interval(samples)
    print(f"pooled p99 ratio, 90 % bootstrap interval over rounds: {low:.2f}x .. {high:.2f}x")
    if args.control:
        what = (
            "nothing was posted (A/A: both phases alike)"
            if args.control == "none"
            else f"the batches went to a SCHED_IDLE {args.control} stand-in, not serve"
        )
        print(f"(control: {what})")
        return
    print(
        f"goal: Check p99 with 16 MB ingests <= {GOAL}x baseline: "
        f"{'met' if p99 <= GOAL else 'NOT met'} ({p99:.2f}x)"
    )


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # a failed run must not wait forever on its serve process
        for child in multiprocessing.active_children():
            child.kill()
        raise
