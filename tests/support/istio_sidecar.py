"""A stand-in for Istio's inbound sidecar in front of `meshward serve` (the Istio route).

istiod cannot run here, so this renders what it gives the sidecar of meshward's pod for its
`grpc-` ports under STRICT PeerAuthentication, as Envoy config: one listener per port that
requires a client certificate from the mesh CA (Istio's mTLS), an HTTP connection manager that
appends the verified caller to `x-forwarded-client-cert` (Istio's default for sidecars is
APPEND_FORWARD with Subject, DNS and URI; SANITIZE_SET for gateways) with `By=` the sidecar's own
identity, and a plaintext HTTP/2 cluster to serve on loopback, no route timeout (tap streams live
long) and Istio's open circuit breakers. Used by tests/app/serve/test_istio_route.py and
bench/extauthz.py (the extra hop).
"""

from __future__ import annotations

from typing import Any

from meshward.istio import filters
from meshward.istio.bootstrap import HCM_CONFIG, ROUTER_CONFIG
from meshward.istio.tls import SidecarTLS, downstream_socket

ISTIO_LIMIT = 4294967295  # Istio's default circuit breaker thresholds (max uint32)


def _listener(name: str, tls: SidecarTLS, cluster: str, xfcc: str, strict: bool) -> dict[str, Any]:
    hcm = {
        "@type": HCM_CONFIG,
        "stat_prefix": f"inbound_{name}",
        "codec_type": "AUTO",
        "use_remote_address": False,
        "forward_client_cert_details": xfcc,
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
        "route_config": {
            "name": f"inbound|{name}",
            "virtual_hosts": [
                {
                    "name": f"inbound|{name}",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": cluster, "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [{"name": filters.ROUTER, "typed_config": {"@type": ROUTER_CONFIG}}],
    }
    hcm_filter = [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    mtls = {"transport_socket": downstream_socket(tls, ["h2", "http/1.1"]), "filters": hcm_filter}
    listener: dict[str, Any] = {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [mtls],
    }
    if not strict:  # PERMISSIVE: Istio's TLS inspector picks the mTLS or the plaintext chain
        mtls["filter_chain_match"] = {"transport_protocol": "tls"}
        listener["listener_filters"] = [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener"
                    ".tls_inspector.v3.TlsInspector"
                },
            }
        ]
        plain = {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": hcm_filter}
        listener["filter_chains"].append(plain)
    return listener


def meshward_sidecar(
    tls: SidecarTLS,
    serve_ports: dict[str, int],
    xfcc: str = "APPEND_FORWARD",
    *,
    strict: bool = True,
) -> dict[str, Any]:
    """The bootstrap: a listener named after each of `serve_ports` (e.g. {"authz": 9191,
    "tap": 9192}) forwarding to that loopback port of serve; `tls` is meshward's own
    certificate (its SPIFFE id becomes the XFCC `By=`). `strict=False`: PERMISSIVE
    PeerAuthentication, plaintext accepted too."""
    listeners, clusters = [], []
    for name, port in serve_ports.items():
        cluster = filters.grpc_cluster(f"inbound|{port}||", "127.0.0.1", port)
        cluster["circuit_breakers"] = {
            "thresholds": [
                {
                    "max_connections": ISTIO_LIMIT,
                    "max_pending_requests": ISTIO_LIMIT,
                    "max_requests": ISTIO_LIMIT,
                }
            ]
        }
        clusters.append(cluster)
        listeners.append(_listener(name, tls, cluster["name"], xfcc, strict))
    return {
        "node": {"id": "sidecar~127.0.0.1~meshward.meshward~meshward.svc.cluster.local"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
