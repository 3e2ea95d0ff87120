"""A Linkerd-like pod for the node-tap tests: the app plus a real Envoy playing linkerd-proxy.

The Envoy's inbound listener takes the pod IP:4143 and forwards to the app on the pod IP (over
the pod's `lo`, as linkerd-proxy does since 2.11): gRPC (content-type application/grpc) to the
gRPC port over h2c, everything else to the HTTP port over HTTP/1.1, adding `l5d-client-id`
with the caller's identity as the real proxy does after mTLS.

Like linkerd-proxy, it never forwards an `l5d-client-id` a client sent: the header is removed
from every inbound request, and set only from the connection's identity. Which connections are
"mTLS from `caller`" is the test's choice (`meshed_from`: source addresses, default all); from
any other source the request reaches the app without the header, as a plaintext (unmeshed)
caller's does behind linkerd-proxy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from meshward.core.wire import LINKERD_ADMIN_PORT as ADMIN_PORT
from meshward.core.wire import LINKERD_INBOUND_PORT as INBOUND_PORT
from meshward.istio.bootstrap import h2_upstream
from tests.support.netns import Pod

HERE = Path(__file__).parent
ENVOY = Path(sys.executable).parent / "envoy"
CALLER = "web.shop.serviceaccount.identity.linkerd.cluster.local"
HTTP_PORT = 8080
GRPC_PORT = 50051


def _cluster(name: str, ip: str, port: int, h2: bool) -> dict:
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": ip, "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
            ]
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = h2_upstream()
    return c


def _hcm(caller: str | None) -> dict:
    """The inbound HTTP connection manager; `caller`: the connection's verified identity."""
    headers: dict = {"request_headers_to_remove": ["l5d-client-id"]}
    if caller is not None:  # Envoy removes before it adds
        headers["request_headers_to_add"] = [
            {
                "header": {"key": "l5d-client-id", "value": caller},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "codec_type": "AUTO",
        "route_config": {
            **headers,
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {
                                "prefix": "/",
                                "headers": [
                                    {
                                        "name": "content-type",
                                        "string_match": {"prefix": "application/grpc"},
                                    }
                                ],
                            },
                            "route": {"cluster": "grpc", "timeout": "10s"},
                        },
                        {"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "10s"}},
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }


def _chain(hcm: dict, sources: list[str] | None = None) -> dict:
    chain: dict = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    if sources is not None:
        prefixes = [{"address_prefix": a, "prefix_len": 32} for a in sources]
        chain["filter_chain_match"] = {"source_prefix_ranges": prefixes}
    return chain


def bootstrap(ip: str, caller: str = CALLER, meshed_from: list[str] | None = None) -> dict:
    """`meshed_from`: the source IPs whose connections carry `caller`'s identity (None: all)."""
    if meshed_from is None:
        chains = [_chain(_hcm(caller))]
    else:  # the most specific match wins: the meshed sources, else the plaintext chain
        chains = [_chain(_hcm(caller), meshed_from), _chain(_hcm(None))]
    return {
        # the admin port where linkerd-proxy has its own (probes, metrics): never app traffic
        "admin": {"address": {"socket_address": {"address": ip, "port_value": ADMIN_PORT}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": ip, "port_value": INBOUND_PORT}},
                    "filter_chains": chains,
                }
            ],
            "clusters": [
                _cluster("app", ip, HTTP_PORT, False),
                _cluster("grpc", ip, GRPC_PORT, True),
            ],
        },
    }


class LinkerdPod:
    """Start the app and the proxy inside `pod`; processes die with the node."""

    def __init__(
        self, pod: Pod, caller: str = CALLER, meshed_from: list[str] | None = None
    ) -> None:
        self.pod = pod
        self.caller = caller
        self.meshed_from = meshed_from
        self.dir = Path(tempfile.mkdtemp(prefix="mw-nodetap-"))
        self.proxy_port = INBOUND_PORT

    def config(self) -> dict:
        """The proxy's Envoy bootstrap (IstioPod renders Istio's inbound sidecar instead)."""
        return bootstrap(self.pod.ip, self.caller, self.meshed_from)

    def start(self) -> None:
        app = self.pod.popen(
            [sys.executable, str(HERE / "podapp.py"), self.pod.ip, str(HTTP_PORT), str(GRPC_PORT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        cfg = self.dir / "envoy.json"
        cfg.write_text(json.dumps(self.config()))
        self.envoy_log = self.dir / "envoy.log"
        with open(self.envoy_log, "w") as log:
            self.envoy = self.pod.popen(
                [
                    str(ENVOY),
                    "--use-dynamic-base-id",
                    "-c",
                    str(cfg),
                    "-l",
                    "warning",
                    "--concurrency",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        assert app.stdout is not None
        line = app.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"pod app did not start: {line!r}")
        deadline = time.monotonic() + 20
        while True:
            if self.envoy.poll() is not None:
                raise RuntimeError("envoy exited: " + self.envoy_log.read_text()[-2000:])
            try:
                self.pod.wait_port(self.proxy_port, timeout=1)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        self.pod.wait_port(HTTP_PORT)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
