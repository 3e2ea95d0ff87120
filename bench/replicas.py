"""Serve replicas on the cluster store (one run, ~2-3 minutes, root: a real kube-apiserver).

Every serve runs `--store kubernetes` against the test API server (tests/support/apiserver.py)
and judges what one Envoy sidecar (rendered by istio/bootstrap.py, ext_authz only) sends it; the
app is an Envoy direct_response. Measured in the same run:

1. **Checks/s and Checks per serve-CPU-second**, one replica vs two: the sidecar's ext_authz
   cluster has one endpoint, then both (Envoy round-robins), under the same wrk load (POST
   /api/orders, 1 KB JSON, namespace in enforce, allowlist learned before). Checks are counted
   by serve's own metric; CPU is user+system of every serve process alive in the scenario
   (2 cores are shared by Envoy, wrk and the replicas, so Checks/s alone says little). Goal:
   two replicas >= 0.9x one replica's Checks per serve-CPU-second (no coordination tax).
   The scenarios alternate (1, 2, 1, 2 ...) and the spread is printed.
2. **Rule propagation**: a Check with a new path to one replica (learn mode), then polling the
   other's allowlist until the rule is there; p50 and max of several, with the flush interval.
3. **API writes per second** while two replicas learn varied paths through the sidecar: the
   API server's own `apiserver_request_total` for allowlists (create, update, status).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from envoy_harness import (
    ROOT,
    EnvoyProcess,
    MeshwardServe,
    app_bootstrap,
    order_body,
    post_script,
    request,
    sidecar,
    wrk,
)

sys.path.insert(0, str(ROOT))

import psutil

from meshward.app.install import crds
from meshward.istio.certs import MeshCA
from tests.support.apiserver import KubeCluster, missing_reason
from tests.support.metrics import sample
from tests.support.replicas import ServeProcess, check

NS = "bench"  # the sidecars' namespace (envoy_harness.sidecar renders bench/api)
AUTHZ = "envoy.filters.http.ext_authz"
TAP = "envoy.filters.http.ext_proc"


def balanced(boot: dict[str, Any], servers: list[Any]) -> dict[str, Any]:
    """The sidecar's ext_authz and tap clusters pointed at every replica (round robin)."""
    for cluster in boot["static_resources"]["clusters"]:
        port_of = {"meshward-authz": "authz", "meshward-tap": "tap"}.get(cluster["name"])
        if port_of is None:
            continue
        lb = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        first = lb[0]
        lb[:] = []
        for srv in servers:
            ep = json.loads(json.dumps(first))
            ep["endpoint"]["address"]["socket_address"]["port_value"] = getattr(srv, port_of)
            lb.append(ep)
    return boot


def mesh_sidecar(app: int, mode: str, servers: list[Any], tls: Any, name: str) -> EnvoyProcess:
    """A sidecar with meshward's filters (ext_authz in monitor/enforce, the tap) balancing
    over `servers`, with a certificate from their CA (`tls`: serve's gRPC requires mTLS)."""
    boot = sidecar(app, mode, keep=(AUTHZ, TAP), authz_port=servers[0].authz, meshward_tls=tls)
    return EnvoyProcess(balanced(boot, servers), name=name).start()


def checks(srv: Any) -> float:
    """Checks answered so far (serve's own metric; ServeProcess and MeshwardServe alike)."""
    if isinstance(srv, ServeProcess):
        text = srv.client.metrics_text()
    else:
        text = srv.api("GET", "/metrics")
    return sum(sample(text, f'meshward_checks_total{{result="{r}"}}') for r in ("ok", "denied"))


def cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def api_writes(cluster: KubeCluster) -> float:
    """Write requests on allowlists (and their status) the API server has answered so far."""
    req = urllib.request.Request(
        f"{cluster.url}/metrics", headers={"Authorization": f"Bearer {cluster.admin_token}"}
    )
    import ssl

    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    text = urllib.request.urlopen(req, timeout=10, context=ctx).read().decode()
    n = 0.0
    for line in text.splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'resource="allowlists"' in line
            and any(f'verb="{v}"' in line for v in ("POST", "PUT", "PATCH", "APPLY"))
        ):
            n += float(line.rsplit(" ", 1)[1])
    return n


def load(port: int, seconds: float, body: bytes) -> tuple[float, int]:
    r = wrk(f"http://127.0.0.1:{port}/api/orders", 16, seconds, post_script(body))
    return r.rps, r.non2xx + r.errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=8.0, help="wrk seconds per scenario")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--flush", type=float, default=2.0, help="serve's flush interval (s)")
    args = ap.parse_args()
    reason = missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="meshward-bench-replicas-"))
    cluster = KubeCluster(tmp)
    servers: list[ServeProcess] = []
    servers_own: list[MeshwardServe] = []
    envoys: list[EnvoyProcess] = []
    try:
        cluster.start()
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds()}),
        )
        cluster.kubectl("wait", "--for=condition=Established", "crd/allowlists.meshward.io")
        cluster.kubectl("create", "namespace", NS)
        kubeconfig = cluster.write_kubeconfig(cluster.admin_token)
        flags = ("--flush-interval", str(args.flush), "--log-level", "warning")

        def start(name: str, ports: tuple[int, int, int] | None = None) -> ServeProcess:
            s = ServeProcess(kubeconfig, name, tmp, *flags, ports=ports)
            s.wait_ready(60)
            return s

        a, b = start("replica-a"), start("replica-b")
        servers += [a, b]
        app = EnvoyProcess(app_bootstrap(), name="app").start()
        envoys.append(app)

        # 3. API writes while both learn varied paths through one sidecar balancing over both
        both = mesh_sidecar(app.port, "learn", [a, b], a.tls(NS), "sidecar-learn")
        envoys.append(both)
        body = order_body()
        for _ in range(10):
            assert request(both.port, "/api/orders", body) == 200
        varied = (
            "counter = 0\nrequest = function()\n  counter = counter + 1\n"
            '  return wrk.format("GET", "/api/items/" .. (counter % 5000) .. "/detail/" '
            ".. (counter % 7))\nend\n"
        )
        w0, t0 = api_writes(cluster), time.monotonic()
        learned = wrk(f"http://127.0.0.1:{both.port}/", 16, args.seconds, varied)
        time.sleep(args.flush * 1.5)  # the last flushes
        writes = (api_writes(cluster) - w0) / (time.monotonic() - t0)
        print(
            f"learn phase: {learned.rps:,.0f} req/s through the sidecar, "
            f"API writes {writes:.1f}/s (2 replicas, flush {args.flush:g} s)"
        )

        # 2. rule propagation between the replicas (learn mode, flush interval as set)
        delays = []
        for i in range(8):
            time.sleep(random.uniform(0, args.flush))  # no phase lock with the flushes
            path = f"/probe/{i}-x{i}z"  # a literal segment: its own rule
            dest = f"{NS}/api"
            t = time.monotonic()
            assert check(a.authz, path, NS, tls=a.tls(NS)) == 0
            while True:
                doc = b.client.request("GET", f"/api/v1/allowlist?destination={dest}")
                paths = {e["path"] for s in doc["services"] for e in s["endpoints"]}
                if path in paths:
                    break
                if time.monotonic() - t > 30:
                    raise RuntimeError(f"{path} never reached the other replica")
                time.sleep(0.01)
            delays.append(time.monotonic() - t)
        print(
            f"rule learned by one replica -> in the other's engine: p50 "
            f"{statistics.median(delays):.2f} s, max {max(delays):.2f} s (flush {args.flush:g} s; "
            "bound: the writer's flush + the reader's flush, 2 intervals)"
        )

        # 1. Checks/s and Checks per serve-CPU-second, one replica vs two
        cluster.kubectl("label", "namespace", NS, "meshward.io/mode=enforce", "--overwrite")
        time.sleep(args.flush * 2)
        # ext_authz only (bench/envoytap.py measures the tap); b's ports stay the same
        # when it is restarted below
        cert = a.tls(NS)
        one = EnvoyProcess(
            sidecar(app.port, "enforce", keep=(AUTHZ,), authz_port=a.authz, meshward_tls=cert),
            name="sidecar-1",
        ).start()
        two = EnvoyProcess(
            balanced(
                sidecar(app.port, "enforce", keep=(AUTHZ,), authz_port=a.authz, meshward_tls=cert),
                [a, b],
            ),
            name="sidecar-2",
        ).start()
        envoys += [one, two]
        if request(one.port, "/api/orders", body) != 200:
            from tests.support.envoy_http import http

            raise RuntimeError(f"allowlist not learned: {http(one.port, '/api/orders', body)}")
        assert request(two.port, "/api/orders", body) == 200
        # the no-sharing baseline: two replicas each on its own SQLite file, same sidecar
        own_ca = MeshCA(tmp / "own-ca")  # one CA for both, made before they start
        shared_ca = ("--grpc-ca-dir", str(own_ca.dir))
        own = [
            MeshwardServe(str(tmp / "own-c"), *shared_ca),
            MeshwardServe(str(tmp / "own-d"), *shared_ca),
        ]
        own_cert = own_ca.issue(NS, "api", out=tmp / "own-issued")
        servers_own.extend(own)
        learner = mesh_sidecar(app.port, "learn", own, own_cert, "sidecar-own-learn")
        envoys.append(learner)
        for _ in range(20):  # round robin: each learns the order
            assert request(learner.port, "/api/orders", body) == 200
        for srv in own:
            srv.api("PUT", f"/api/v1/modes/{NS}", {"mode": "enforce"})
        alone = EnvoyProcess(
            balanced(
                sidecar(
                    app.port,
                    "enforce",
                    keep=(AUTHZ,),
                    authz_port=own[0].authz,
                    meshward_tls=own_cert,
                ),
                own,
            ),
            name="sidecar-own",
        ).start()
        envoys.append(alone)
        assert request(alone.port, "/api/orders", body) == 200, "own stores not learned"
        names = ("1 replica, cluster store", "2 replicas, cluster store", "2 replicas, own SQLite")
        results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for name in names:
                if name == names[0]:
                    b.stop()
                    servers.remove(b)
                    live: list[Any] = [a]
                    port = one.port
                elif name == names[1]:
                    b = start("replica-b", (b.authz, b.tap, b.http))
                    servers.append(b)
                    live = [a, b]
                    port = two.port
                    time.sleep(args.flush)  # b's first flushes
                else:
                    live, port = own, alone.port
                c0, u0 = sum(checks(s) for s in live), cpu([s.proc.pid for s in live])
                rps, bad = load(port, args.seconds, body)
                c1, u1 = sum(checks(s) for s in live), cpu([s.proc.pid for s in live])
                per_cpu = (c1 - c0) / max(1e-9, u1 - u0)
                results[name].append((rps, per_cpu))
                print(
                    f"  {name}: {rps:,.0f} Checks/s through Envoy, serve CPU "
                    f"{u1 - u0:.1f} s, {per_cpu:,.0f} Checks per serve-CPU-second"
                    + (f", {bad} non-2xx/errors" if bad else "")
                )
        med = {n: statistics.median(r[1] for r in results[n]) for n in names}
        rps_med = {n: statistics.median(r[0] for r in results[n]) for n in names}
        print("medians (2 shared cores: Envoy, wrk and the replicas compete):")
        for n in names:
            print(f"  {n}: {rps_med[n]:,.0f} Checks/s, {med[n]:,.0f} Checks per serve-CPU-second")

        def ratio(x: str, y: str) -> str:
            per = [rx[1] / ry[1] for rx, ry in zip(results[x], results[y], strict=True)]
            return f"{med[x] / med[y]:.2f}x (per round {', '.join(f'{r:.2f}' for r in per)})"

        print(
            f"two vs one replica, Checks per serve-CPU-second: {ratio(names[1], names[0])}; "
            "goal >= 0.9x"
        )
        print(
            f"coordination alone (two sharing vs two on their own SQLite): "
            f"{ratio(names[1], names[2])}"
        )
        return 0
    finally:
        for e in envoys:
            e.stop()
        for s in servers:
            s.stop()
        for o in servers_own:
            o.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
