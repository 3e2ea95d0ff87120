"""An Istio-like pod for the node-tap tests: the app, a real Envoy as Istio's inbound sidecar,
and the nat rules istio-iptables (the `istio-init` container or the CNI plugin) writes.

istiod cannot run here, so this renders the inbound side of what it gives a sidecar in REDIRECT
interception mode (istio/istio `pilot/pkg/networking/core`): the `virtualInbound` listener on
15006 with the `original_dst` listener filter (the connection's address before the REDIRECT)
and the TLS inspector, one plaintext (`raw_buffer`) filter chain per app port, as PERMISSIVE
mTLS has, and per port an `inbound|PORT||` cluster of type ORIGINAL_DST whose upstream
connections are bound to 127.0.0.6 (`InboundPassthroughBindIpv4`), so Envoy forwards to the app
at the pod IP from 127.0.0.6 over the pod's `lo`. Left out, as the bypass watch does not depend
on them: the mTLS chains, Istio's metadata-exchange and stats filters, and meshward's ext_authz
(a `/denied` route answers 403 from the sidecar itself, as a denial does). A port without a
filter chain is closed unanswered, as STRICT mTLS closes a plaintext connection.

The rules (`istio_iptables`) are those of `istio-iptables` for REDIRECT mode: PREROUTING ->
ISTIO_INBOUND (the proxy's own ports and `traffic.sidecar.istio.io/excludeInboundPorts` RETURN)
-> ISTIO_IN_REDIRECT -> REDIRECT to 15006; OUTPUT -> ISTIO_OUTPUT, where the proxy's hop from
127.0.0.6 on `lo` RETURNs and the rest goes to 15001 (ISTIO_REDIRECT). The uid/gid-owner rules
for the proxy's user 1337 are left out: Envoy runs as root here and only makes the 127.0.0.6
hop.
"""

from __future__ import annotations

from typing import Any

from meshward.core.wire import ISTIO_INBOUND_BIND, ISTIO_INBOUND_PORT, ISTIO_OUTBOUND_PORT
from meshward.istio.bootstrap import h2_upstream
from tests.support.linkerdpod import GRPC_PORT, HTTP_PORT, LinkerdPod
from tests.support.netns import Pod

# the ports istio-iptables always leaves to the proxy (HBONE, Prometheus, health, agent)
ISTIO_INBOUND_EXCLUDED = (15008, 15090, 15021, 15020)


def _inbound_chain(port: int) -> dict[str, Any]:
    cluster = f"inbound|{port}||"
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": f"inbound_0.0.0.0_{port}",
        "codec_type": "AUTO",
        "server_name": "istio-envoy",  # Istio's, written on every response (OVERWRITE)
        "route_config": {
            "name": f"inbound|{port}||",
            "virtual_hosts": [
                {
                    "name": f"inbound|http|{port}",
                    "domains": ["*"],
                    "routes": [
                        # what a denial by ext_authz or an AuthorizationPolicy looks like on the
                        # wire: the sidecar answers 403 itself, the app never sees the request
                        {"match": {"prefix": "/denied"}, "direct_response": {"status": 403}},
                        {"match": {"prefix": "/"}, "route": {"cluster": cluster}},
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
    return {
        "name": f"0.0.0.0_{port}",
        "filter_chain_match": {"destination_port": port, "transport_protocol": "raw_buffer"},
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
    }


def _inbound_cluster(port: int, h2: bool) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": f"inbound|{port}||",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        "cleanup_interval": "60s",
        "upstream_bind_config": {
            "source_address": {"address": ISTIO_INBOUND_BIND[0], "port_value": 0}
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = h2_upstream()
    return c


def inbound_bootstrap() -> dict[str, Any]:
    """Istio's inbound sidecar for the pod app's HTTP and gRPC ports (see the module)."""
    listener_filter = "type.googleapis.com/envoy.extensions.filters.listener"
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualInbound",
                    "address": {
                        "socket_address": {"address": "0.0.0.0", "port_value": ISTIO_INBOUND_PORT}
                    },
                    "listener_filters": [
                        {
                            "name": "envoy.filters.listener.original_dst",
                            "typed_config": {
                                "@type": f"{listener_filter}.original_dst.v3.OriginalDst"
                            },
                        },
                        {
                            "name": "envoy.filters.listener.tls_inspector",
                            "typed_config": {
                                "@type": f"{listener_filter}.tls_inspector.v3.TlsInspector"
                            },
                        },
                    ],
                    "filter_chains": [_inbound_chain(HTTP_PORT), _inbound_chain(GRPC_PORT)],
                }
            ],
            "clusters": [_inbound_cluster(HTTP_PORT, False), _inbound_cluster(GRPC_PORT, True)],
        },
    }


class IstioPod(LinkerdPod):
    """The app and Istio's inbound sidecar inside `pod` (start, then `istio_iptables`)."""

    def __init__(self, pod: Pod) -> None:
        super().__init__(pod)
        self.proxy_port = ISTIO_INBOUND_PORT

    def config(self) -> dict:
        return inbound_bootstrap()


def _nat(pod: Pod, *rule: str) -> None:
    pod.run(["iptables", "-w", "-t", "nat", *rule])


def istio_iptables(pod: Pod, exclude_inbound: tuple[int, ...] = ()) -> None:
    """(Re)write istio-iptables' nat rules in the pod (REDIRECT mode; see the module)."""
    _nat(pod, "-F")
    _nat(pod, "-X")
    for chain in ("ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"):
        _nat(pod, "-N", chain)
    _nat(pod, "-A", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
    for port in (*ISTIO_INBOUND_EXCLUDED, *exclude_inbound):
        _nat(pod, "-A", "ISTIO_INBOUND", "-p", "tcp", "--dport", str(port), "-j", "RETURN")
    _nat(pod, "-A", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_IN_REDIRECT")
    inbound = str(ISTIO_INBOUND_PORT)
    _nat(pod, "-A", "ISTIO_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", inbound)
    _nat(pod, "-A", "OUTPUT", "-p", "tcp", "-j", "ISTIO_OUTPUT")
    bind = f"{ISTIO_INBOUND_BIND[0]}/32"
    _nat(pod, "-A", "ISTIO_OUTPUT", "-s", bind, "-o", "lo", "-j", "RETURN")
    _nat(pod, "-A", "ISTIO_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN")
    _nat(pod, "-A", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT")
    outbound = str(ISTIO_OUTBOUND_PORT)
    _nat(pod, "-A", "ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", outbound)
