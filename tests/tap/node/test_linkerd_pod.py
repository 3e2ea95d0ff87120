"""The node tap against a real node: namespaces, a real Envoy as linkerd-proxy, real clients.

The client pod calls the server pod's proxy (pod IP:4143) with raw HTTP/1.1 (keep-alive,
chunked, pipelined, HEAD, 100-continue) and gRPC; the tap captures the server pod's `lo`, where
the proxy forwards to the app on the pod IP, and must see every request with its method, path,
status, body and the caller identity the proxy put in `l5d-client-id`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshward.core.observation import Identity, Observation, observation_from_dict
from meshward.core.wire import LINKERD_ADMIN_PORT as ADMIN_PORT
from meshward.runtime.client import ApiClient
from meshward.tap.node.pipeline import NodeTap, PodTarget
from tests.conftest import need_tools
from tests.support.linkerdpod import LinkerdPod
from tests.support.netns import Node, Pod, need_netns

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
ROOT = HERE.parents[2]  # the checkout (tests/tap/node -> .)
SUPPORT = ROOT / "tests" / "support"

EXPECTED = [
    ("GET", "/users/42", 200, b""),
    ("POST", "/orders", 200, b'{"item": 1, "qty": 2}'),
    ("POST", "/upload", 200, b"hello world"),
    ("GET", "/pipe/1", 200, b""),
    ("POST", "/pipe/2", 200, b"abc"),
    ("GET", "/pipe/3", 200, b""),
    ("HEAD", "/head", 200, b""),
    ("GET", "/status/404", 404, b""),
    ("PUT", "/continue", 200, b"data"),
]


@pytest.fixture  # a fresh proxy per test: its pooled upstream connections start under the tap
def node() -> Iterator[tuple[Node, Pod, Pod]]:
    need_netns()
    if not (Path(sys.executable).parent / "envoy").exists():
        pytest.skip("envoy not installed in the venv")
    with Node() as n:
        server = n.add_pod("server")
        client = n.add_pod("client")
        proxy = LinkerdPod(server)
        try:
            proxy.start()
            yield n, server, client
        finally:
            proxy.cleanup()


def call(client: Pod, server: Pod) -> dict:
    r = client.run([sys.executable, str(SUPPORT / "podclient.py"), server.ip, "4143"], timeout=60)
    return json.loads(r.stdout)


def check(observed: list[Observation], server: Pod) -> None:
    http = [o for o in observed if o.protocol == "http/1.1"]
    assert [(o.method, o.path, o.status, o.body) for o in http] == EXPECTED
    assert http[0].query == "x=1&y=two"
    grpc = [o for o in observed if o.protocol == "grpc"]
    assert len(grpc) == 3
    for o in grpc:
        assert (o.method, o.path, o.status) == ("POST", "/grpc.health.v1.Health/Check", 200)
        assert (o.grpc_service, o.grpc_method) == ("grpc.health.v1.Health", "Check")
        assert o.body == b"\0\0\0\0\x0a\x0a\x08shop.Api"  # HealthCheckRequest(service=...)
        assert ("grpc-status", "0") in o.response_headers
    for o in observed:
        assert o.seen_by == "node-tap"
        assert (o.source.namespace, o.source.workload) == ("shop", "web")
        assert o.source.principal == "web.shop.serviceaccount.identity.linkerd.cluster.local"
        assert (o.destination.namespace, o.destination.workload) == ("shop", "api")
        assert o.destination.ip == server.ip
        assert o.destination.port in (8080, 50051)
        assert o.extra["netns"] in (server.netns, server.path)
    assert len(observed) == len(EXPECTED) + 3  # admin-port traffic (4191) is not app traffic


def admin_probe(server: Pod) -> None:
    """What kubelet probes and Prometheus do: the proxy's admin port, to be ignored."""
    server.run(
        [
            "python3",
            "-c",
            f"import urllib.request as u; u.urlopen("
            f"'http://{server.ip}:{ADMIN_PORT}/ready', timeout=5).read()",
        ]
    )


def test_every_request_observed_in_process(node: tuple[Node, Pod, Pod]) -> None:
    _, server, client = node
    observed: list[Observation] = []
    target = PodTarget(server.path, Identity("shop", "api"), None)  # --netns as a path
    tap = NodeTap([target], [], observed.append)
    tap.open()
    stop = threading.Event()
    runner = threading.Thread(target=tap.run, args=(stop,))
    runner.start()
    try:
        admin_probe(server)
        result = call(client, server)
        assert result["http1"] == [200] * 7 + [404, 200]
        assert result["grpc"] == ["SERVING"] * 3
        deadline = time.monotonic() + 5
        while len(observed) < len(EXPECTED) + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(10)
        tap.close()
    check(observed, server)
    stats = tap.stats()
    assert stats["transactions"] == len(observed)
    assert stats["parse_errors"] == 0 and stats["kernel_drops"] == 0 and stats["gaps"] == 0


def test_cli_jsonl(node: tuple[Node, Pod, Pod]) -> None:
    need_tools("ping")
    _, server, client = node
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshward",
            "node-tap",
            "--netns",
            server.netns,
            "--pod",
            "shop/api",
            "--stats-interval",
            "1",
            "--duration",
            "30",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until the sockets are open
            if '"capturing"' in line and ":lo" in line:
                break
        admin_probe(server)
        call(client, server)
        time.sleep(1.5)
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    observed = [observation_from_dict(json.loads(line)) for line in out.splitlines()]
    check([o for o in observed if not o.threats], server)
    final = [json.loads(x) for x in err.splitlines() if '"node-tap stopped"' in x]
    assert final and final[-1]["transactions"] == len(EXPECTED) + 3
    assert final[-1]["out_sent"] == len(observed) and final[-1]["out_dropped"] == 0


def test_cli_rejects_bad_input() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "meshward", "node-tap", "--netns", "no-such-netns-mw"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
        timeout=30,
    )
    assert r.returncode == 2 and "no-such-netns-mw" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "meshward", "node-tap"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
        timeout=30,
    )
    assert r.returncode == 2 and "nothing to capture" in r.stderr


@pytest.mark.parametrize("target", ["pod-eth0", "node-iface"])
def test_cli_network_alerts(target: str) -> None:
    """ICMP/UDP wiring of the command: the pod's eth0 (--netns), or a node interface (--iface,
    run in the node namespace as the agent runs in the host's), reaches the network detectors."""
    need_netns()
    need_tools("hping3")
    with Node() as n:
        victim = n.add_pod("victim")
        attacker = n.add_pod("attacker")
        args = (
            ["--netns", victim.netns, "--pod", "lab/victim"]
            if target == "pod-eth0"
            else ["--iface", victim.veth]
        )
        proc = n.popen(
            [sys.executable, "-m", "meshward", "node-tap", *args, "--duration", "30"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        assert proc.stderr is not None
        opened = 0
        for line in proc.stderr:
            opened += '"capturing"' in line
            if opened == (2 if target == "pod-eth0" else 1):
                break
        attacker.run(
            ["timeout", "-s", "INT", "2", "hping3", "--icmp", "--flood", "-q", victim.ip],
            check=False,
        )
        time.sleep(1.5)
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err[-2000:]
    alerts = [observation_from_dict(json.loads(x)) for x in out.splitlines()]
    floods = [a for a in alerts if any(t.name == "ICMP.Flood" for t in a.threats)]
    assert floods, out[-2000:]
    where = floods[0].extra.get("where", "")
    if target == "pod-eth0":
        assert floods[0].destination.key == "lab/victim" and where.endswith(":eth0")
    else:
        assert where == victim.veth and floods[0].destination.ip == victim.ip


def test_cli_to_meshward_serve(node: tuple[Node, Pod, Pod], tmp_path: Path) -> None:
    """node-tap --server: batches reach the real `meshward serve` ingest and its engine."""
    _, server, client = node
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshward",
            "serve",
            "--listen-host",
            "127.0.0.1",
            "--authz-port",
            "0",
            "--tap-port",
            "0",
            "--http-port",
            "0",
            "--db",
            str(tmp_path / "mw.db"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    tap = None
    try:
        assert serve.stderr is not None
        port = 0
        for line in serve.stderr:
            if '"serving"' in line:
                port = json.loads(line)["http"]
                break
        assert port, "meshward serve did not start"
        url = f"http://127.0.0.1:{port}"
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
                "--server",
                url,
                "--api-token-file",
                str(tmp_path / "api-token"),  # serve generated it beside its store
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert tap.stderr is not None
        for line in tap.stderr:
            if '"capturing"' in line:
                break
        call(client, server)
        deadline = time.monotonic() + 10
        seen = 0.0
        while time.monotonic() < deadline:
            text = ApiClient(url, timeout=5, token_file=str(tmp_path / "api-token")).metrics_text()
            m = re.search(r'meshward_observations_total\{source="node-tap"\} ([\d.e+]+)', text)
            seen = float(m[1]) if m else 0.0
            if seen >= len(EXPECTED) + 3:
                break
            time.sleep(0.2)
        assert seen == len(EXPECTED) + 3
        doc = ApiClient(url, timeout=5, token_file=str(tmp_path / "api-token")).allowlist(
            destination="shop/api"
        )
        assert "/orders" in json.dumps(doc) and "grpc.health.v1.Health" in json.dumps(doc)
    finally:
        for proc in (tap, serve):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


SPOOFED = "admin.kube-system.serviceaccount.identity.linkerd.cluster.local"


def _send_spoofed(pod: Pod, server: Pod, path: str) -> None:
    code = (
        "import http.client as h\n"
        f"c = h.HTTPConnection({server.ip!r}, 4143, timeout=10)\n"
        f"c.request('GET', {path!r}, headers={{'l5d-client-id': {SPOOFED!r}}})\n"
        "assert c.getresponse().status == 200\n"
    )
    pod.run([sys.executable, "-c", code])


def test_a_client_sent_l5d_client_id_is_not_believed() -> None:
    """linkerd-proxy strips a client's `l5d-client-id` and sets its own from mTLS: a meshed
    caller is named by its verified identity, a plaintext one by nothing, whatever they send."""
    need_netns()
    if not (Path(sys.executable).parent / "envoy").exists():
        pytest.skip("envoy not installed in the venv")
    with Node() as n:
        server, client, outsider = n.add_pod("server"), n.add_pod("client"), n.add_pod("outsider")
        proxy = LinkerdPod(server, meshed_from=[client.ip])
        observed: list[Observation] = []
        tap = NodeTap([PodTarget(server.netns, Identity("shop", "api"), None)], [], observed.append)
        stop = threading.Event()
        runner = threading.Thread(target=tap.run, args=(stop,))
        try:
            proxy.start()
            tap.open()
            runner.start()
            _send_spoofed(client, server, "/from-meshed")
            _send_spoofed(outsider, server, "/from-plaintext")
            deadline = time.monotonic() + 5
            while len(observed) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            if runner.is_alive():
                runner.join(10)
            tap.close()
            proxy.cleanup()
    by_path = {o.path: o for o in observed}
    assert set(by_path) == {"/from-meshed", "/from-plaintext"}
    for o in observed:  # the app got one header at most, never the client's
        assert [v for k, v in o.headers if k == "l5d-client-id"] in ([], [proxy.caller])
    meshed, plaintext = by_path["/from-meshed"].source, by_path["/from-plaintext"].source
    assert meshed.principal == proxy.caller and meshed.key == "shop/web"
    assert plaintext.principal == "" and plaintext.key == "unknown"
