"""The Envoy tap (ext_proc, observability mode) through a real Envoy 1.40 (~1 minute).

1. Requests/s through one sidecar with the tap off and on (wrk, 1 and 16 connections), and how
   many of the requests meshward observed at that saturation (the tap is send-and-go: when the
   server falls behind, Envoy drops the copy, never the request).
2. A fixed 1,000 requests/s for 10 s (h2load --rps, HTTP/1.1, a small JSON POST): observations
   received must equal requests sent (zero loss).

`--burn N` runs N busy-loop processes for the length of the paced phase (the 2 cores shared
with other work), so the loss under CPU contention can be reproduced on demand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from envoy_harness import (
    EnvoyProcess,
    MeshwardServe,
    app_bootstrap,
    post_script,
    request,
    sidecar,
    wrk,
)

EXT_PROC = "envoy.filters.http.ext_proc"
OBSERVED = 'meshward_observations_total{source="envoy-tap"}'
COMPLETED = "http.inbound_api.downstream_rq_completed"  # Envoy's own count of requests
BODY = b'{"sku":"book-1","qty":2,"note":"gift wrap"}'
TAP_CLUSTER = "cluster.meshward-tap."
# the tap cluster's counters worth printing: overflows, resets, timeouts, refused streams
CLUSTER_KEYS = re.compile(
    r"overflow|reset|timeout|refused|destroy|fail|cx_total|rq_total|"
    r"rq_active|pending_total|flood|protocol_error"
)


@contextlib.contextmanager
def burning(n: int) -> Iterator[None]:
    """`n` busy-loop processes (CPU contention) for the length of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The tap cluster's interesting counters that moved (gauges as their last value)."""
    out = {}
    for key, value in after.items():
        short = key.removeprefix(TAP_CLUSTER)
        if not CLUSTER_KEYS.search(short) or "circuit_breakers" in short:
            continue
        d = value if short.endswith("_active") else value - before.get(key, 0)
        if d:
            out[short] = d
    return out


def settle(mw: MeshwardServe, timeout: float = 15.0) -> float:
    """The observation count once it stops growing (streams still draining after the load)."""
    last, deadline = -1.0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = mw.metric(OBSERVED)
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    return last


def h2load_paced(port: int, rate: int, seconds: int, clients: int = 100) -> tuple[int, int]:
    """(requests done, 2xx) at `rate` req/s in total for `seconds` (HTTP/1.1)."""
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as data:
        data.write(BODY)
        data.flush()
        cmd = [
            "h2load",
            "--h1",
            "-c",
            str(clients),
            "--rps",
            str(rate // clients),
            "-D",
            str(seconds),
            "-d",
            data.name,
            "-H",
            "content-type: application/json",
            f"http://127.0.0.1:{port}/api/orders",
        ]
        out = subprocess.run(
            cmd, capture_output=True, text=True, check=True, timeout=seconds + 60
        ).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not done or not codes:
        raise RuntimeError(f"cannot read h2load output:\n{out}")
    return int(done[1]), int(codes[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="wrk duration per point")
    ap.add_argument("--rate", type=int, default=1000, help="paced requests/s")
    ap.add_argument("--paced-seconds", type=int, default=10)
    ap.add_argument("--paced-only", action="store_true", help="skip the wrk part")
    ap.add_argument(
        "--burn",
        type=int,
        default=0,
        metavar="N",
        help="N busy-loop processes during the paced phase (CPU contention)",
    )
    args = ap.parse_args()
    script = post_script(BODY)
    ok = True
    with (
        tempfile.TemporaryDirectory(prefix="meshward-bench-") as tmp,
        EnvoyProcess(app_bootstrap(), name="app") as app,
    ):
        mw = MeshwardServe(tmp)
        try:
            off = sidecar(app.port, "learn", keep=())
            on = sidecar(
                app.port, "learn", keep=(EXT_PROC,), tap_port=mw.tap, meshward_tls=mw.tls()
            )
            for conns in () if args.paced_only else (1, 16):
                with EnvoyProcess(off, name="tap-off") as e:
                    wrk(f"http://127.0.0.1:{e.port}", 4, 1, script)
                    r_off = wrk(f"http://127.0.0.1:{e.port}", conns, args.seconds, script)
                with EnvoyProcess(on, name="tap-on") as e:
                    wrk(f"http://127.0.0.1:{e.port}", 4, 1, script)
                    before = settle(mw)
                    envoy_before = e.stats(COMPLETED)[COMPLETED]
                    r_on = wrk(f"http://127.0.0.1:{e.port}", conns, args.seconds, script)
                    seen = settle(mw) - before
                    handled = e.stats(COMPLETED)[COMPLETED] - envoy_before
                print(
                    f"  c={conns}: tap off {r_off.rps:7.0f} req/s | tap on {r_on.rps:7.0f} req/s"
                    f" ({r_on.rps / r_off.rps:.2f}x), p50 {r_off.p50_us:.0f} -> "
                    f"{r_on.p50_us:.0f} µs, observed {seen:.0f} of {handled} requests Envoy "
                    f"handled ({seen / max(handled, 1):.1%}), failed requests "
                    f"{r_on.non2xx + r_on.errors}",
                    flush=True,
                )
                ok &= r_on.non2xx + r_on.errors == 0

            with EnvoyProcess(on, name="tap-paced") as e:
                assert request(e.port, "/api/orders", BODY) == 200
                before = settle(mw)
                envoy_before = e.stats(COMPLETED)[COMPLETED]
                cluster_before = e.stats(TAP_CLUSTER)
                with burning(args.burn):
                    done, good = h2load_paced(e.port, args.rate, args.paced_seconds)
                seen = settle(mw) - before
                cluster = deltas(cluster_before, e.stats(TAP_CLUSTER))
                sent = e.stats(COMPLETED)[COMPLETED] - envoy_before  # exact, in-flight included
                envoy_tap = {
                    k.rsplit(".", 1)[-1]: v
                    for k, v in e.stats("http.").items()
                    if ".ext_proc." in k and v
                }
                streams = {
                    o: mw.metric(f'meshward_tap_streams_total{{outcome="{o}"}}')
                    for o in ("complete", "cut", "expired", "error")
                }
                drops = [
                    line
                    for line in mw.api("GET", "/metrics").splitlines()
                    if line.startswith(("meshward_drops_total", "meshward_errors_total"))
                ]
                if drops:
                    print("meshward drops/errors:", "; ".join(drops))
            lost = sent - seen
            target = args.rate * args.paced_seconds
            print(
                f"\nfixed {args.rate} req/s for {args.paced_seconds} s with {args.burn} "
                f"busy-loop process(es) on {os.cpu_count()} cores: h2load finished "
                f"{done} of {target} ({good} 2xx); Envoy completed {sent} requests; "
                f"observations received {seen:.0f}, lost {lost:.0f}; "
                f"tap streams over the run {streams}; Envoy ext_proc stats {envoy_tap}; "
                f"tap cluster {cluster}"
            )
            zero = lost == 0 and good == done
            paced = done >= 0.97 * target
            print(
                f"goal: observations received == requests sent at {args.rate} req/s: "
                f"{'MET' if zero and paced else 'NOT MET'}"
                + ("" if paced else " (the load generator did not reach the rate here)")
            )
            zero = zero and paced
            ok &= zero
        finally:
            mw.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
