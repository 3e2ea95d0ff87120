"""Shared pieces of bench/extauthz.py and bench/envoytap.py: app, sidecars, wrk, serve.

The app behind every sidecar is a second Envoy answering with `direct_response` (C++, so the app
is never the bottleneck and its latency is the same in every scenario).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from meshward.istio.bootstrap import HCM_CONFIG, ROUTER_CONFIG, render_bootstrap  # noqa: E402
from meshward.istio.certs import MeshCA  # noqa: E402
from meshward.istio.envoyproc import EnvoyProcess  # noqa: E402
from meshward.istio.tls import SidecarTLS  # noqa: E402
from meshward.runtime.client import ApiClient, ApiError  # noqa: E402
from tests.support.metrics import sample  # noqa: E402


def order_body(i: int = 0) -> bytes:
    """A 1 KB JSON order; values vary with `i`, the shape does not."""
    doc = {
        "order_id": 100000 + i,
        "customer": {"id": 4000 + i % 50, "name": "Ada Lovelace", "email": "ada@example.com"},
        "items": [
            {"sku": f"sku-{(i + k) % 90:04d}", "qty": 1 + k % 3, "price": 12.5 + k}
            for k in range(9)
        ],
        "note": "leave at the door",
    }
    raw = json.dumps(doc, separators=(",", ":"))
    doc["pad"] = "x" * max(0, 1024 - len(raw) - 10)
    return json.dumps(doc, separators=(",", ":")).encode()


async def always_allow(port: int) -> None:
    """Scenario (b)'s ext_authz: a grpc.aio server answering every Check OK, doing nothing else
    (the transport floor). Serves until cancelled."""
    import grpc
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
    import asyncio

    import uvloop

    uvloop.install()
    asyncio.run(always_allow(port))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_bootstrap(body: str = '{"ok":true}') -> dict[str, Any]:
    """An Envoy that answers 200 with `body` to everything: the app under the sidecar."""
    hcm = {
        "@type": HCM_CONFIG,
        "stat_prefix": "app",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": body}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_CONFIG}}
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "app",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def http_filters(boot: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return hcm["typed_config"]["http_filters"]


def sidecar(
    app_port: int,
    mode: str,
    *,
    keep: tuple[str, ...],
    authz_port: int = 9,
    tap_port: int = 9,
    extra_filter: dict[str, Any] | None = None,
    meshward_tls: SidecarTLS | None = None,
) -> dict[str, Any]:
    """A rendered sidecar keeping only the meshward filters named in `keep` (+ the router);
    with `meshward_tls`, mTLS to serve with that certificate (serve's default)."""
    boot = render_bootstrap(
        0,
        f"127.0.0.1:{app_port}",
        "bench",
        "api",
        mode,
        authz_port=authz_port,
        tap_port=tap_port,
        meshward_tls=meshward_tls,
    )
    filters = http_filters(boot)
    kept = [f for f in filters[:-1] if f["name"] in keep]
    if extra_filter is not None:
        kept.append(extra_filter)
    filters[:] = [*kept, filters[-1]]
    return boot


@dataclass
class WrkResult:
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    non2xx: int
    errors: int


_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m[1]) * _UNITS[m[2]]


def wrk(url: str, connections: int, seconds: float, script: str = "") -> WrkResult:
    """Run wrk with --latency; parse p50, p99, requests/s, non-2xx and socket errors."""
    threads = 1 if connections == 1 else 2
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        if script:
            cmd += ["-s", f.name]
        out = subprocess.run(
            [*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout
    finally:
        os.unlink(f.name)
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        rps=rps,
        p50_us=_us(pct["50"]),
        p99_us=_us(pct["99"]),
        requests=total,
        non2xx=int(non2xx[1]) if non2xx else 0,
        errors=sum(int(x) for x in errs.groups()) if errs else 0,
    )


def post_script(body: bytes, path: str = "/api/orders") -> str:
    return (
        'wrk.method = "POST"\n'
        f"wrk.path = {json.dumps(path)}\n"
        f"wrk.body = {json.dumps(body.decode())}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


class MeshwardServe:
    """`meshward serve` as a subprocess on free loopback ports (fresh store); `extra` flags.
    By default it requires mTLS with the CA it creates beside its store: `tls()` issues a
    sidecar's certificate from it."""

    def __init__(self, tmp: str, *extra: str) -> None:
        self.tmp = tmp
        self.authz, self.tap, self.http = free_port(), free_port(), free_port()
        self.token_file = f"{tmp}/api-token"  # serve generates it beside the store
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshward",
                "serve",
                "--db",
                f"{tmp}/bench.db",
                "--listen-host",
                "127.0.0.1",
                "--authz-port",
                str(self.authz),
                "--tap-port",
                str(self.tap),
                "--http-port",
                str(self.http),
                "--log-level",
                "warning",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("meshward serve exited while starting")
            try:
                if self.api("GET", "/readyz")["ready"]:
                    break
            except ApiError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("meshward serve not ready in 30 s")
            time.sleep(0.1)

    def api(self, method: str, path: str, doc: Any = None) -> Any:
        client = ApiClient(f"http://127.0.0.1:{self.http}", token_file=self.token_file)
        return client.request(method, path, doc)

    def tls(self, namespace: str = "bench", service_account: str = "api") -> SidecarTLS:
        """A sidecar certificate from serve's CA (the one `meshward envoy bootstrap` issues)."""
        ca = MeshCA(Path(self.tmp) / "meshward-ca")
        return ca.issue(namespace, service_account, out=Path(self.tmp) / "issued")

    def metric(self, start: str) -> float:
        return sample(self.api("GET", "/metrics"), start)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def request(port: int, path: str, body: bytes | None = None) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        headers={"content-type": "application/json"} if body else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


__all__ = [
    "EnvoyProcess",
    "MeshwardServe",
    "WrkResult",
    "app_bootstrap",
    "free_port",
    "post_script",
    "request",
    "sidecar",
    "wrk",
]
