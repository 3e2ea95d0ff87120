"""Benchmark of `meshward node-tap` on a node built from network namespaces (root).

One run measures, against a real Envoy playing linkerd-proxy in the server pod:
  1. HTTP/1.1 transactions reconstructed at fixed offered rates (h2load --rps from the client
     pod through the proxy): loss = requests h2load completed minus transactions the tap
     emitted; kernel drops and stream gaps must stay 0 (goal: zero loss at 2,000 req/s).
  2. The tap's CPU share (of one core) at 1,000 req/s, next to Envoy's and the app's.
  3. Packet rate: hping3 floods 64-byte TCP data segments over the pod's lo while node-tap and
     tcpdump capture the same packets with the same filter; packets per second each one
     processed (goal: node-tap >= 0.5x tcpdump).
  4. Many pods (`--pods 100`): one node tap on 100 meshed pod namespaces (two capture sockets
     each, `--pods-ring-mb` per socket): the time to find every pod's namespace by its IP (the
     node agent's scan) and to attach them all, memory per pod (the tap's RSS over a one-pod
     tap's), CPU idle and under load, and kernel drops (tp_drops) and lost transactions at
     `--pods-rate` requests/s spread over all the pods (goal: zero drops at 2,000). The pods'
     apps and proxies are played by bench/multipod.py (one process each, sockets in every
     pod's namespace): a hundred Envoys would not fit this machine.
The machine is shared and noisy: every figure comes with its baseline from the same run.
Usage: .venv/bin/python bench/nodetap.py [--rates 500,1000,2000,3000] [--seconds 5]
       .venv/bin/python bench/nodetap.py --only-pods [--pods 100] [--pods-ring-mb 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from meshward.core.wire import LINKERD_ADMIN_PORT as ADMIN_PORT  # noqa: E402
from tests.support.linkerdpod import HTTP_PORT, LinkerdPod  # noqa: E402
from tests.support.netns import Node, Pod  # noqa: E402

SINK_PORT = 7000
# the node-tap lo filter in tcpdump's words: data-carrying or SYN/FIN/RST TCP, no mesh ports
TCPDUMP_FILTER = (
    "tcp and not port 4140 and not port 4143 and not port 4190 and not port 4191 and "
    "(tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0 or "
    "(ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) != 0)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("meshward_nodetap_"):
            name, value = line.split()
            out[name.removeprefix("meshward_nodetap_")] = float(value)
    return out


def settle(port: int, key: str = "transactions", quiet: float = 0.6) -> dict[str, float]:
    """Metrics once `key` stopped moving (the tap caught up)."""
    last = metrics(port)
    while True:
        time.sleep(quiet)
        now = metrics(port)
        if now[key] == last[key]:
            return now
        last = now


def cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def h2load(client: Pod, url: str, rate: int, seconds: float) -> dict[str, float]:
    conns = max(2, min(64, rate // 100))
    r = client.run(
        [
            "h2load",
            "--h1",
            "-c",
            str(conns),
            "--rps",
            str(rate // conns),
            "-D",
            str(int(seconds)),
            url,
        ],
        timeout=seconds + 60,
        check=False,
    )
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", r.stdout)
    if not m:
        raise RuntimeError(f"h2load output not understood:\n{r.stdout}\n{r.stderr}")
    finished = re.search(r"finished in ([\d.]+)(m?s)", r.stdout)
    took = float(finished[1]) / (1000 if finished[2] == "ms" else 1) if finished else seconds
    return {"done": int(m[3]), "succeeded": int(m[4]), "seconds": took}


def upstream_requests(server: Pod) -> int:
    """Requests the proxy forwarded to the app: the ground truth the tap must match."""
    code = (
        f"import urllib.request as u; print(u.urlopen('http://{server.ip}:{ADMIN_PORT}"
        "/stats?filter=^cluster.app.upstream_rq_total$', timeout=5).read().decode())"
    )
    out = server.run([sys.executable, "-c", code]).stdout
    return int(out.split(":")[1])


def rates_phase(
    args: argparse.Namespace,
    client: Pod,
    server: Pod,
    mport: int,
    tap_pid: int,
    proxy: LinkerdPod,
    app_pid: int,
) -> list[dict[str, object]]:
    url = f"http://{server.ip}:4143/users/42?x=1"
    h2load(client, url, 200, 1)  # warm-up: connections to the app exist before measuring
    results = []
    for rate in args.rates:
        before = settle(mport)
        up0 = upstream_requests(server)
        c0 = (cpu(tap_pid), cpu(proxy.envoy.pid), cpu(app_pid), time.monotonic())
        load = h2load(client, url, rate, args.seconds)
        c1 = (cpu(tap_pid), cpu(proxy.envoy.pid), cpu(app_pid), time.monotonic())
        after = settle(mport)
        forwarded = upstream_requests(server) - up0
        wall = c1[3] - c0[3]
        seen = int(after["transactions"] - before["transactions"])
        row = {
            "offered_rps": rate,
            "achieved_rps": round(load["done"] / load["seconds"], 1),
            "requests_forwarded": forwarded,
            "transactions_seen": seen,
            "lost": forwarded - seen,
            "kernel_drops": int(after["kernel_drops"] - before["kernel_drops"]),
            "gaps": int(after["gaps"] - before["gaps"]),
            "parse_errors": int(after["parse_errors"] - before["parse_errors"]),
            "tap_cpu_pct": round(100 * (c1[0] - c0[0]) / wall, 1),
            "envoy_cpu_pct": round(100 * (c1[1] - c0[1]) / wall, 1),
            "app_cpu_pct": round(100 * (c1[2] - c0[2]) / wall, 1),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def packet_phase(args: argparse.Namespace, server: Pod, mport: int) -> dict[str, Any]:
    """Flood the pod's lo with TCP data segments (hping3, one flow, 64-byte payloads) while
    node-tap and tcpdump (same filter, same 32 MiB buffer) capture them; more packets are
    offered than either can take, so each one's processed rate is its capacity here."""
    pcap = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            server.netns,
            "tcpdump",
            "-i",
            "lo",
            "-n",
            "-q",
            "-B",
            "32768",
            "-w",
            "/dev/null",
            TCPDUMP_FILTER,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # tcpdump is listening
    before = metrics(mport)
    t0 = time.monotonic()
    floods = [
        server.popen(
            [
                "timeout",
                "-s",
                "INT",
                str(int(args.seconds)),
                "hping3",
                "--flood",
                "-q",
                "-A",
                "-d",
                "64",
                "-p",
                str(SINK_PORT),
                "-s",
                str(40000 + 1000 * i),
                "-k",
                server.ip,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(args.flooders)
    ]
    for proc in floods:
        proc.wait(args.seconds + 30)
    wall = time.monotonic() - t0
    after = settle(mport, "packets")
    pcap.send_signal(signal.SIGINT)
    _, err = pcap.communicate(timeout=10)
    captured = int(re.search(r"(\d+) packets captured", err)[1])  # type: ignore[index]
    dropped = int(re.search(r"(\d+) packets dropped by kernel", err)[1])  # type: ignore[index]
    tap_packets = int(after["packets"] - before["packets"])
    tap_offered = int(after["kernel_packets"] - before["kernel_packets"])
    row = {
        "seconds": round(wall, 2),
        "offered_packets": tap_offered,
        "tap_packets": tap_packets,
        "tap_kernel_drops": int(after["kernel_drops"] - before["kernel_drops"]),
        "tap_pps": round(tap_packets / wall),
        # hping3's segments belong to no connection the tap saw open: decoded, looked up and
        # skipped; the kernel's RSTs for them are decoded and looked up too
        "tap_unknown_flow_segments": int(after["midstream_skipped"] - before["midstream_skipped"]),
        "tcpdump_packets": captured,
        "tcpdump_kernel_drops": dropped,
        "tcpdump_pps": round(captured / wall),
        "ratio_tap_vs_tcpdump": round(tap_packets / captured, 3) if captured else None,
    }
    print(json.dumps(row), flush=True)
    return row


def _start_tap(
    pods: list[Pod], mport: int, ring_mb: int
) -> tuple[subprocess.Popen[str], list[float]]:
    """A node tap on `pods` (lo and eth0 each); returns it once its metrics answer, with the
    log times of its "capturing" lines."""
    cmd = [sys.executable, "-m", "meshward", "node-tap", "--ring-mb", str(ring_mb)]
    for i, pod in enumerate(pods):
        cmd += ["--netns", pod.netns, "--pod", f"bench/p{i}"]
    cmd += ["--metrics-port", str(mport), "--metrics-host", "127.0.0.1"]
    cmd += ["--stats-interval", "60", "--mode", "bench=off"]
    tap = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    times: list[float] = []
    assert tap.stderr is not None
    for line in tap.stderr:
        if '"capturing"' in line:
            times.append(json.loads(line)["ts"])
            if len(times) == 2 * len(pods):
                break
    deadline = time.monotonic() + 30
    while True:
        try:
            metrics(mport)
            return tap, times
        except OSError:
            if time.monotonic() > deadline or tap.poll() is not None:
                raise
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def discovery_attach(pods: list[Pod]) -> dict[str, Any]:
    """The agent's own path on a real API server: 100 Running meshed Pod objects of this node,
    then `node-tap --node`: seconds from its start to every capture open, and from its first
    "attaching" to its last "capturing" (watch, sync, namespace scan, attach)."""
    from kubernetes import client

    from tests.support.apiserver import KubeCluster, missing_reason

    reason = missing_reason()
    if reason:
        return {"skipped": reason}
    kube = KubeCluster(Path(tempfile.mkdtemp(prefix="mw-bench-kube-")))
    kube.start()
    try:
        api = kube.api_client()
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": "bench"}})
        proxy = {"name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy:stable"}
        for i, pod in enumerate(pods):
            name = f"p{i}-5d8f7c-abcde"
            core.create_namespaced_pod(
                "bench",
                {
                    "metadata": {"name": name, "labels": {"pod-template-hash": "5d8f7c"}},
                    "spec": {
                        "nodeName": "bench-node",
                        "containers": [{"name": "app", "image": "app:1"}, proxy],
                    },
                },
            )
            status = {"status": {"phase": "Running", "podIP": pod.ip}}
            core.patch_namespaced_pod_status(name, "bench", status)
        api.close()
        t0 = time.monotonic()
        tap = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshward",
                "node-tap",
                "--node",
                "bench-node",
                "--kubeconfig",
                str(kube.kubeconfig),
                "--stats-interval",
                "60",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        first: float | None = None
        last = 0.0
        opened = 0
        try:
            assert tap.stderr is not None
            for line in tap.stderr:
                if '"attaching"' in line and first is None:
                    first = json.loads(line)["ts"]
                if '"capturing"' in line:
                    opened += 1
                    last = json.loads(line)["ts"]
                    if opened == 2 * len(pods):
                        break
            wall = time.monotonic() - t0
        finally:
            _stop(tap)
        return {
            "pods": len(pods),
            "captures_opened": opened,
            "start_to_all_attached_s": round(wall, 2),
            "first_attaching_to_last_capture_s": round(last - (first or last), 2),
        }
    finally:
        kube.stop()


def pods_phase(args: argparse.Namespace) -> dict[str, Any]:
    from meshward.tap.node.netns import NamespaceIndex
    from meshward.tap.node.pipeline import namespace_addresses

    n = args.pods
    with Node(subnet="10.213.10") as node:
        t0 = time.monotonic()
        pods = [node.add_pod(f"p{i}") for i in range(n)]
        build_s = time.monotonic() - t0
        podfile = Path(tempfile.mkdtemp(prefix="mw-pods-")) / "pods.json"
        podfile.write_text(json.dumps([[p.path, p.ip] for p in pods]))
        app = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "multipod.py"), "app", str(podfile)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdout is not None and app.stdout.readline().strip() == "ready"
            # what the node agent does for a new pod: scan the node's namespaces, find its IP
            index = NamespaceIndex(namespace_addresses)
            t0 = time.monotonic()
            index.refresh()
            scan_s = time.monotonic() - t0
            found = sum(index.find(p.ip) is not None for p in pods)
            namespaces_scanned = len(index)
            mport = free_port()
            one, _ = _start_tap(pods[:1], mport, args.pods_ring_mb)
            time.sleep(1.0)
            rss_one = psutil.Process(one.pid).memory_info().rss
            _stop(one)
            mport = free_port()
            tap, times = _start_tap(pods, mport, args.pods_ring_mb)
            if args.tap_nice:  # what a CPU request gives a pod under contention: a bigger share
                psutil.Process(tap.pid).nice(args.tap_nice)
            try:
                time.sleep(1.0)
                proc = psutil.Process(tap.pid)
                rss_all = proc.memory_info().rss
                c0, w0 = cpu(tap.pid), time.monotonic()
                time.sleep(3.0)
                idle_pct = 100 * (cpu(tap.pid) - c0) / (time.monotonic() - w0)
                before = settle(mport)
                c0, w0 = cpu(tap.pid), time.monotonic()
                load_cmd = [sys.executable, str(ROOT / "bench" / "multipod.py"), "load"]
                done = subprocess.run(
                    [*load_cmd, str(podfile), str(args.pods_rate), str(args.seconds)],
                    capture_output=True,
                    text=True,
                    timeout=args.seconds + 120,
                    check=True,
                )
                load = json.loads(done.stdout)
                c1, w1 = cpu(tap.pid), time.monotonic()
                # a busy machine can stall the tap for a while: wait for 2 s of no progress
                after = settle(mport, quiet=2.0)
                seen = int(after["transactions"] - before["transactions"])
                row = {
                    "pods": n,
                    "capture_sockets": len(times),
                    "ring_mb_per_socket": args.pods_ring_mb,
                    "rings_total_mib": len(times) * args.pods_ring_mb,
                    "build_pods_s": round(build_s, 1),
                    "scan_namespaces_s": round(scan_s, 3),
                    "namespaces_scanned": namespaces_scanned,
                    "pods_found_by_ip": found,
                    "attach_all_s": round(times[-1] - times[0], 3),
                    "tap_rss_mib_one_pod": round(rss_one / 2**20, 1),
                    "tap_rss_mib_all_pods": round(rss_all / 2**20, 1),
                    "rss_kib_per_pod": round((rss_all - rss_one) / (n - 1) / 1024, 1),
                    "tap_cpu_pct_idle": round(idle_pct, 1),
                    "offered_rps": args.pods_rate,
                    "achieved_rps": load["achieved_rps"],
                    "requests_done": load["done"],
                    "transactions_seen": seen,
                    "lost": load["done"] - seen,
                    "kernel_drops": int(after["kernel_drops"] - before["kernel_drops"]),
                    "gaps": int(after["gaps"] - before["gaps"]),
                    "tap_cpu_pct_load": round(100 * (c1 - c0) / (w1 - w0), 1),
                    "tap_nice": args.tap_nice,
                    "load_average_1m": round(os.getloadavg()[0], 1),
                }
            finally:
                _stop(tap)
            if args.kube:
                row["through_the_api_server"] = discovery_attach(pods)
        finally:
            _stop(app)
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--rates", default="500,1000,2000,3000", help="offered request rates, comma-separated"
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per step")
    ap.add_argument("--flooders", type=int, default=3, help="hping3 processes for the packet rate")
    ap.add_argument("--pods", type=int, default=100, help="pods of the many-pod phase (0: skip)")
    ap.add_argument("--pods-ring-mb", type=int, default=2, help="ring per socket there (MiB)")
    ap.add_argument("--pods-rate", type=int, default=2000, help="requests/s over all the pods")
    ap.add_argument("--only-pods", action="store_true", help="run the many-pod phase only")
    ap.add_argument(
        "--tap-nice",
        type=int,
        default=0,
        help="nice value of the many-pod tap (e.g. -5: the larger CPU share a pod's CPU request "
        "buys it on a busy node; default 0)",
    )
    ap.add_argument(
        "--kube",
        action="store_true",
        help="also attach the pods as the agent does, through a real API server (--node)",
    )
    args = ap.parse_args()
    args.rates = [int(r) for r in args.rates.split(",")]
    if os.geteuid() != 0:
        print("bench/nodetap.py needs root (network namespaces, packet capture)")
        return 2
    missing = [t for t in ("h2load", "tcpdump", "hping3", "ip") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)}")
        return 2
    many = pods_phase(args) if args.pods > 1 else None
    if args.only_pods:
        print(json.dumps({"goal_zero_drops_many_pods": bool(many and many["kernel_drops"] == 0)}))
        return 0
    mport = free_port()
    with Node(subnet="10.213.9") as node:
        server = node.add_pod("server")
        client = node.add_pod("client")
        proxy = LinkerdPod(server)
        try:
            proxy.start()
            app_pid = next(p.pid for p in server.procs if p is not proxy.envoy)
            tap = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meshward",
                    "node-tap",
                    "--netns",
                    server.netns,
                    "--pod",
                    "shop/api",
                    "--pod-iface",
                    "none",
                    "--metrics-port",
                    str(mport),
                    "--metrics-host",
                    "127.0.0.1",
                    "--stats-interval",
                    "60",
                    "--ring-mb",
                    "32",
                ],  # the same 32 MiB buffer tcpdump -B 32768 gets
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert tap.stderr is not None
                for line in tap.stderr:
                    if '"capturing"' in line:
                        break
                deadline = time.monotonic() + 10
                while True:  # the metrics endpoint comes up right after the sockets
                    try:
                        metrics(mport)
                        break
                    except OSError:
                        if time.monotonic() > deadline or tap.poll() is not None:
                            raise
                        time.sleep(0.1)
                print(
                    f"== node-tap: transactions at fixed offered rates via the proxy "
                    f"(app {server.ip}:{HTTP_PORT})",
                    flush=True,
                )
                rates = rates_phase(args, client, server, mport, tap.pid, proxy, app_pid)
                print("== packet rate: node-tap vs tcpdump on the same lo traffic", flush=True)
                packets = packet_phase(args, server, mport)
            finally:
                tap.terminate()
                try:
                    tap.wait(15)
                except subprocess.TimeoutExpired:
                    tap.kill()
                    tap.wait()
        finally:
            proxy.cleanup()
    zero_loss = [r["offered_rps"] for r in rates if r["lost"] == 0 and r["kernel_drops"] == 0]
    at_1k = next((r for r in rates if r["offered_rps"] == 1000), None)
    summary = {
        "max_offered_rps_with_zero_loss": max(zero_loss) if zero_loss else 0,
        "goal_zero_loss_at_2000": 2000 in zero_loss,
        "tap_cpu_pct_at_1000": at_1k["tap_cpu_pct"] if at_1k else None,
        "packet_ratio_vs_tcpdump": packets["ratio_tap_vs_tcpdump"],
        "goal_ratio_0_5": (packets["ratio_tap_vs_tcpdump"] or 0) >= 0.5,
        "many_pods": many,
    }
    print("== summary")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
