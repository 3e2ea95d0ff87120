"""What serve's revocation list costs a Check over real mTLS gRPC (issue 11), ~20 seconds.

One `meshward serve` (in-process, mTLS with its CA, the real detectors) and one grpc.aio client
on one long-lived connection send the same Check again and again. Scenarios, interleaved in
rounds so the machine's noise falls on all of them alike:
  (a) no revocation list (the baseline: the verifier keys its cache on the SAN list)
  (b) a list of 1 entry (another certificate's serial): every call now reads the peer
      certificate from gRPC's auth context and checks its serial and identity
  (c) a list of 10,000 entries (serials and identities): the same, a set lookup
Printed: the verifier's own time per call (serve's PeerVerifier.sidecar, timed around it) and
the client's round trip per Check, as medians of the rounds, with ratios to (a) and the spread.

    PYTHONPATH=. .venv/bin/python bench/revocation.py [--rounds 5] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from envoy.service.auth.v3 import external_auth_pb2_grpc

from meshward.core.revocation import RevocationList, entry
from meshward.istio.certs import MeshCA
from meshward.runtime.grpcpeer import PeerPolicy
from tests.support.grpcmtls import aio_channel
from tests.support.serve import check_request, running_server

SCENARIOS = ("a: no list", "b: 1 entry", "c: 10,000 entries")


def _lists() -> list[bytes]:
    now = datetime.now(UTC)
    entries = [entry("serial", f"{n + 1:x}", now) for n in range(9_000)]
    entries += [entry("id", f"spiffe://cluster.local/ns/ns{n}/sa/sa", now) for n in range(1_000)]
    big = RevocationList.of(tuple(entries))
    one = RevocationList.of((entry("serial", "abc", now),))
    return [b"", one.render().encode(), big.render().encode()]


async def _run(rounds: int, calls: int) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {s: [] for s in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="meshward-bench-rev-") as tmp:
        ca = MeshCA(Path(tmp) / "ca")
        tls = ca.issue("shop", "api", out=Path(tmp) / "issued")
        lists = _lists()
        async with running_server(peers=PeerPolicy(), grpc_ca_dir=str(ca.dir)) as srv:
            assert srv.peers.revocations is not None
            revocations = srv.peers.revocations
            spent = [0.0]
            inner = srv.peers.sidecar

            def timed(context: Any, metadata: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return inner(context, metadata)
                finally:
                    spent[0] += time.perf_counter() - t0

            srv.peers.sidecar = timed  # type: ignore[method-assign]
            req = check_request("GET", "/items")
            async with aio_channel(srv.ports["authz"], tls) as ch:
                stub = external_auth_pb2_grpc.AuthorizationStub(ch)
                for _ in range(200):  # warm: learned, connection up
                    await stub.Check(req, timeout=5)
                for n in range(rounds):
                    order = list(zip(SCENARIOS, lists, strict=True))
                    for name, data in order[n % 3 :] + order[: n % 3]:  # each goes first too
                        revocations.path.write_bytes(data)
                        revocations.refresh()
                        assert bool(revocations.list) == bool(data) and not revocations.broken
                        spent[0] = 0.0
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            await stub.Check(req, timeout=5)
                        wall = time.perf_counter() - t0
                        out[name].append((spent[0] / calls * 1e6, wall / calls * 1e6))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    results = asyncio.run(_run(args.rounds, args.calls))
    base_v = statistics.median(v for v, _ in results[SCENARIOS[0]])
    base_w = statistics.median(w for _, w in results[SCENARIOS[0]])
    print(f"{args.rounds} rounds x {args.calls} Checks, one mTLS connection")
    print(f"{'scenario':<20} {'verifier us/call':>17} {'ratio':>6} {'Check us':>9} {'ratio':>6}")
    for name in SCENARIOS:
        v = [x for x, _ in results[name]]
        w = [y for _, y in results[name]]
        print(
            f"{name:<20} {statistics.median(v):>17.2f} {statistics.median(v) / base_v:>5.2f}x "
            f"{statistics.median(w):>9.1f} {statistics.median(w) / base_w:>5.2f}x   "
            f"(rounds: verifier {min(v):.2f}-{max(v):.2f}, Check {min(w):.0f}-{max(w):.0f} us)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
