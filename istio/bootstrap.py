"""A complete sidecar-equivalent Envoy bootstrap built around the filters of `istio.filters`.

One listener -> HTTP connection manager (x-request-id as Istio's sidecar: generated when
missing, kept when present so both ends of a call share it) -> meshward's filters -> router ->
one upstream cluster (the app for an inbound sidecar, the callee's sidecar for an outbound one).
Admin listens on loopback only. Optional mTLS with SPIFFE identities, as Istio's sidecars do, so
ext_authz sees the caller's principal.
"""

from __future__ import annotations

from typing import Any

from meshward.core.names import is_ip
from meshward.core.peer import meshward_identity
from meshward.istio import filters
from meshward.istio.filters import FilterSettings
from meshward.istio.tls import SidecarTLS, downstream_socket, upstream_socket

APP_CLUSTER = "app"
ROUTER_CONFIG = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM_CONFIG = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
UUID_REQUEST_ID = "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"


def split_host_port(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) -> (host, port); ValueError on anything else."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, number


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def upstream_cluster(
    upstream: str, *, h2: bool = False, tls: SidecarTLS | None = None, name: str = APP_CLUSTER
) -> dict[str, Any]:
    """The cluster the router forwards to; HTTP/2 when the app speaks gRPC (`h2`)."""
    host, port = split_host_port(upstream)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if is_ip(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(host, port)}}]}],
        },
    }
    if h2:
        cluster["typed_extension_protocol_options"] = h2_upstream()
    if tls is not None:
        # offer only the protocol this cluster speaks, else ALPN could pick one it does not
        cluster["transport_socket"] = upstream_socket(tls, ["h2"] if h2 else ["http/1.1"])
    return cluster


def h2_upstream() -> dict[str, Any]:
    """A static cluster's `typed_extension_protocol_options` that make it speak HTTP/2 upstream
    (gRPC, h2c)."""
    return {
        filters.HTTP_PROTOCOL_OPTIONS: {
            "@type": f"type.googleapis.com/{filters.HTTP_PROTOCOL_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


def connection_manager(s: FilterSettings, *, route_timeout_s: float = 15.0) -> dict[str, Any]:
    """The HCM: meshward's filters before the router, one catch-all route to the app cluster."""
    virtual_host: dict[str, Any] = {
        "name": f"{s.direction}|{s.namespace}|{s.workload}",
        "domains": ["*"],
        "routes": [
            {
                "match": {"prefix": "/"},
                "route": {"cluster": APP_CLUSTER, "timeout": f"{route_timeout_s:g}s"},
            }
        ],
    }
    if s.direction == "outbound":
        # Istio's default outbound retry policy: a callee's sidecar restarting (a config
        # change) or a stale pooled connection costs a retry, not an error
        virtual_host["retry_policy"] = {
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,"
            "retriable-status-codes",
            "retriable_status_codes": [503],
            "num_retries": 2,
        }
    if s.with_authz:
        virtual_host["typed_per_filter_config"] = filters.ext_authz_route_config(s)
    return {
        "@type": HCM_CONFIG,
        "stat_prefix": f"{s.direction}_{s.workload or 'sidecar'}",
        "codec_type": "AUTO",
        # as Istio's sidecar: make an x-request-id when there is none, never replace one
        "generate_request_id": True,
        "preserve_external_request_id": True,
        "request_id_extension": {
            "typed_config": {"@type": UUID_REQUEST_ID, "use_request_id_for_trace_sampling": True}
        },
        # as Istio's sidecar: trust no XFF hop, pass the caller's certificate (URI SAN) on
        "use_remote_address": False,
        "forward_client_cert_details": "APPEND_FORWARD" if s.direction == "inbound" else "SANITIZE",
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
        "route_config": {"name": f"{s.direction}_route", "virtual_hosts": [virtual_host]},
        "http_filters": [
            *filters.http_filters(s),
            {"name": filters.ROUTER, "typed_config": {"@type": ROUTER_CONFIG}},
        ],
    }


def render_bootstrap(
    listen_port: int,
    upstream: str,
    namespace: str,
    workload: str,
    mode: str,
    server_host: str = "127.0.0.1",
    authz_port: int = 9191,
    tap_port: int = 9192,
    admin_port: int = 0,
    *,
    listen_host: str = "127.0.0.1",
    upstream_h2: bool = False,
    direction: str = "inbound",
    body_limit: int = 8192,
    timeout_ms: int = 200,
    tls: SidecarTLS | None = None,
    tap_close_timeout_ms: int = filters.TAP_CLOSE_TIMEOUT_MS,
    tap_stream_window: int = filters.TAP_STREAM_WINDOW,
    meshward_tls: SidecarTLS | None = None,
    server_identity: str = "",
) -> dict[str, Any]:
    """A whole Envoy bootstrap for one sidecar of `namespace/workload` in `mode`.

    direction="inbound": the callee's sidecar (listen -> app at `upstream`); "outbound": the
    caller's sidecar (the app calls `listen_port`, Envoy forwards to the callee's sidecar at
    `upstream`), which reports the same exchange from the source side for the both-ends join.
    listen_port and admin_port may be 0 (Envoy picks; EnvoyProcess reads the real ports).
    With `tls`, inbound requires a client certificate and outbound presents one.
    With `meshward_tls` (the workload's certificate from meshward's CA, or the mesh's), the
    ext_authz and tap clusters speak mTLS to serve, which takes whose traffic it is from that
    certificate, and accept only a serve presenting `server_identity` (default: meshward's,
    core.peer.meshward_identity); without it they are
    plaintext (serve's `--grpc-plaintext`, behind its own sidecar).
    `tap_close_timeout_ms` and `tap_stream_window`: how far meshward may lag behind the tap
    (FilterSettings).
    """
    s = FilterSettings(
        namespace=namespace,
        workload=workload,
        mode=mode,
        direction=direction,
        body_limit=body_limit,
        timeout_ms=timeout_ms,
        tap_close_timeout_ms=tap_close_timeout_ms,
        tap_stream_window=tap_stream_window,
    )
    if meshward_tls is not None and not server_identity:
        server_identity = meshward_identity()
    if not 0 <= listen_port < 65536 or not 0 <= admin_port < 65536:
        raise ValueError("ports must be within 0..65535")
    split_host_port(upstream)  # fail early on a bad upstream
    filter_chain: dict[str, Any] = {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": connection_manager(s),
            }
        ]
    }
    if tls is not None and direction == "inbound":
        filter_chain["transport_socket"] = downstream_socket(tls, ["h2", "http/1.1"])
    listener = {
        "name": f"{direction}_{listen_port}" if listen_port else direction,
        "address": _socket(listen_host, listen_port),
        "filter_chains": [filter_chain],
    }
    app = upstream_cluster(upstream, h2=upstream_h2, tls=tls if direction == "outbound" else None)
    return {
        "node": {
            # Istio's sidecar node id: sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local
            "id": f"sidecar~{listen_host}~{workload}.{namespace}~{namespace}.svc.cluster.local",
            "cluster": f"{workload}.{namespace}",
            "metadata": {"NAMESPACE": namespace, "WORKLOAD_NAME": workload, "MESHWARD_MODE": mode},
        },
        "admin": {"address": _socket("127.0.0.1", admin_port)},
        "static_resources": {
            "listeners": [listener],
            "clusters": [
                app,
                *filters.clusters(
                    s,
                    server_host,
                    authz_port,
                    tap_port,
                    tls=meshward_tls,
                    server_identity=server_identity,
                ),
            ],
        },
    }
