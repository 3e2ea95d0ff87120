"""The sidecar filter config, the one source of truth for every Envoy meshward talks to.

`meshward envoy bootstrap`, `meshward istio render` and the demo all take their HTTP filters and
clusters from here, built with envoy-data-plane's typed classes (so field names and types are
checked) and returned as plain JSON-able dicts in Envoy's snake_case JSON form.

What the sidecar sends to meshward (the names are meshward.core.wire's, untrusted hints all):
- ext_authz: `context_extensions` namespace, workload, direction (set per virtual host: the
  ExtAuthz filter itself has no such field, `ExtAuthzPerRoute.check_settings` does), raw
  (bytes) header values, the request body as bytes.
- both gRPC services: initial metadata `x-meshward-namespace`, `x-meshward-workload`,
  `x-meshward-direction` (inbound|outbound) on every call / Process stream.
- ext_proc tap: the connection attributes of wire.TAP_ATTRIBUTES; with `tap_response_body`, the
  metadata `x-meshward-tap-response-body: true` (the server then waits for the response body).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import betterproto2
from envoy_data_plane.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    Cluster,
    ClusterDiscoveryType,
    ClusterLbPolicy,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiVersion,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    Http2ProtocolOptions,
    RoutingPriority,
    SocketAddress,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
    BufferSettings,
    CheckSettings,
    ExtAuthz,
    ExtAuthzPerRoute,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_proc.v3 import (
    ExternalProcessor,
    ProcessingMode,
    ProcessingModeBodySendMode,
    ProcessingModeHeaderSendMode,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any as AnyMsg

from meshward.core import wire
from meshward.core.modes import MODES
from meshward.core.names import is_ip, is_kubernetes_name
from meshward.core.observation import DIRECTIONS
from meshward.core.wire import TAP_CLOSE_TIMEOUT_MS, TAP_STREAM_WINDOW
from meshward.istio.tls import SidecarTLS, upstream_socket

EXT_AUTHZ = "envoy.filters.http.ext_authz"
EXT_PROC = "envoy.filters.http.ext_proc"
ROUTER = "envoy.filters.http.router"
AUTHZ_CLUSTER = "meshward-authz"
TAP_CLUSTER = "meshward-tap"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# ext_proc in observability mode holds one stream per request (docs/envoy.md, "Envoy facts"): the
# default circuit breaker (1024 requests) would fill under load, so the tap cluster gets these.
TAP_CIRCUIT_LIMIT = 100_000


@dataclass(frozen=True)
class FilterSettings:
    """What varies between sidecars: who they guard, how strictly, and how much body to send."""

    namespace: str
    workload: str
    mode: str = "learn"
    direction: str = "inbound"  # inbound: the callee's sidecar; outbound: the caller's
    body_limit: int = 8192  # ext_authz with_request_body.max_request_bytes
    timeout_ms: int = 200  # ext_authz gRPC call timeout
    tap_response_body: bool = False  # also copy response bodies and trailers to the tap
    tap_close_timeout_ms: int = TAP_CLOSE_TIMEOUT_MS  # ext_proc deferred_close_timeout
    tap_stream_window: int = TAP_STREAM_WINDOW  # tap streams open per connection to meshward
    authz_cluster: str = AUTHZ_CLUSTER
    tap_cluster: str = TAP_CLUSTER

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r} ({', '.join(MODES)})")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r} (inbound, outbound)")
        if not is_kubernetes_name(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a Kubernetes name")
        if self.workload and not is_kubernetes_name(self.workload.replace(".", "-")):
            raise ValueError(f"workload {self.workload!r} is not a Kubernetes name")
        if self.body_limit < 0:
            raise ValueError("body limit must be >= 0")
        if self.timeout_ms <= 0:
            raise ValueError("timeout must be > 0 ms")
        if self.tap_close_timeout_ms <= 0:
            raise ValueError("tap close timeout must be > 0 ms")
        if not 1 <= self.tap_stream_window <= 2**31 - 1:
            raise ValueError("tap stream window must be within 1..2147483647")

    @property
    def installed(self) -> bool:
        """In `off` meshward puts nothing into the sidecar: no filters, no clusters."""
        return self.mode != "off"

    @property
    def with_authz(self) -> bool:
        """Only enforce decides inline, and only on the callee's (inbound) side."""
        return self.mode == "enforce" and self.direction == "inbound"


def to_plain(msg: betterproto2.Message) -> dict[str, Any]:
    """A typed message as the snake_case JSON Envoy and Istio accept."""
    return msg.to_dict(casing=betterproto2.Casing.SNAKE)


def typed(msg: betterproto2.Message) -> dict[str, Any]:
    """A message packed as google.protobuf.Any (with its `@type`)."""
    return AnyMsg.pack(msg).to_dict(casing=betterproto2.Casing.SNAKE)


def ext_authz_filter(s: FilterSettings) -> dict[str, Any]:
    """The inline authorization filter: fails closed in enforce, open otherwise."""
    cfg = ExtAuthz(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=s.authz_cluster),
            timeout=timedelta(milliseconds=s.timeout_ms),
            initial_metadata=identity_metadata(s),  # the server's fallback for the identity
        ),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=s.mode != "enforce",
        status_on_error=HttpStatus(code=StatusCode.Forbidden),
        with_request_body=BufferSettings(
            max_request_bytes=s.body_limit, allow_partial_message=True, pack_as_bytes=True
        ),
        include_peer_certificate=True,
        encode_raw_headers=True,  # bytes values: invalid UTF-8 in a header cannot break Check
        stat_prefix="meshward",
    )
    config = typed(cfg)
    config["failure_mode_allow"] = cfg.failure_mode_allow  # explicit even when false (enforce)
    return {"name": EXT_AUTHZ, "typed_config": config}


def ext_authz_route_config(s: FilterSettings) -> dict[str, Any]:
    """Per-virtual-host ext_authz settings: who this sidecar guards, for meshward's Check."""
    per_route = ExtAuthzPerRoute(
        check_settings=CheckSettings(
            context_extensions={
                wire.CONTEXT_NAMESPACE: s.namespace,
                wire.CONTEXT_WORKLOAD: s.workload,
                wire.CONTEXT_DIRECTION: s.direction,
            }
        )
    )
    return {EXT_AUTHZ: typed(per_route)}


def identity_metadata(s: FilterSettings) -> list[HeaderValue]:
    """gRPC metadata on each call and tap stream, so meshward knows whose traffic it is."""
    return [
        HeaderValue(key=wire.METADATA_NAMESPACE, value=s.namespace),
        HeaderValue(key=wire.METADATA_WORKLOAD, value=s.workload),
        HeaderValue(key=wire.METADATA_DIRECTION, value=s.direction),
    ]


def tap_metadata(s: FilterSettings) -> list[HeaderValue]:
    """The identity, plus a flag when the response body follows (Envoy 1.40 sends no
    protocol_config in observability mode, so the server cannot tell otherwise)."""
    out = identity_metadata(s)
    if s.tap_response_body:
        out.append(HeaderValue(key=wire.METADATA_TAP_RESPONSE_BODY, value="true"))
    return out


def ext_proc_filter(s: FilterSettings) -> dict[str, Any]:
    """The tap: ext_proc in observability mode (send and go, never in the request's way).

    Request headers and the STREAMED request body, response headers; the response body and
    trailers only with `tap_response_body` (the server then ends each stream at the response's
    end of stream instead of at its headers, docs/envoy.md, "Envoy facts"). Envoy keeps each stream
    for up to `tap_close_timeout_ms` after the request ended, for a lagging meshward to read.
    """
    send = ProcessingModeHeaderSendMode.SEND
    skip = ProcessingModeHeaderSendMode.SKIP
    streamed = ProcessingModeBodySendMode.STREAMED
    cfg = ExternalProcessor(
        grpc_service=GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=s.tap_cluster),
            initial_metadata=tap_metadata(s),
        ),
        failure_mode_allow=True,
        observability_mode=True,
        processing_mode=ProcessingMode(
            request_header_mode=send,
            response_header_mode=send,
            request_body_mode=streamed,
            response_body_mode=streamed if s.tap_response_body else ProcessingModeBodySendMode.NONE,
            request_trailer_mode=skip,
            response_trailer_mode=send if s.tap_response_body else skip,  # gRPC status
        ),
        request_attributes=list(wire.TAP_ATTRIBUTES),
        stat_prefix="meshward_tap",
        deferred_close_timeout=timedelta(milliseconds=s.tap_close_timeout_ms),
    )
    return {"name": EXT_PROC, "typed_config": typed(cfg)}


def http_filters(s: FilterSettings) -> list[dict[str, Any]]:
    """meshward's filters in order, to go right before the router.

    ext_authz comes first so a denied request stops there (meshward saw it through Check);
    the tap follows and sees every request that went on to the app. None in `off`.
    """
    if not s.installed:
        return []
    filters = [ext_authz_filter(s)] if s.with_authz else []
    filters.append(ext_proc_filter(s))
    return filters


def grpc_cluster(
    name: str,
    host: str,
    port: int,
    *,
    high_limits: bool = False,
    stream_window: int | None = None,
    connect_timeout_s: float = 1.0,
    tls: SidecarTLS | None = None,
    server_identity: str = "",
) -> dict[str, Any]:
    """An HTTP/2 cluster to one meshward gRPC port (DNS name or IP).

    `high_limits`: circuit breakers for one stream per request (the tap). `stream_window`: at
    most that many streams open on one connection, and one connection (Envoy still opens one
    per worker), so further streams wait in the sidecar's queue rather than meshward's.
    `tls`: mTLS to serve with the sidecar's own certificate (serve learns whose traffic it is from
    it), accepting only a server certificate carrying `server_identity` (serve's SPIFFE id).
    """
    options = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions(max_concurrent_streams=stream_window)
        )
    )
    cluster = Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC if is_ip(host) else ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=timedelta(seconds=connect_timeout_s),
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        typed_extension_protocol_options={HTTP_PROTOCOL_OPTIONS: AnyMsg.pack(options)},
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(
                            endpoint=Endpoint(
                                address=Address(
                                    socket_address=SocketAddress(address=host, port_value=port)
                                )
                            )
                        )
                    ]
                )
            ],
        ),
    )
    if high_limits:
        limit = TAP_CIRCUIT_LIMIT
        cluster.circuit_breakers = CircuitBreakers(
            thresholds=[
                CircuitBreakersThresholds(
                    priority=prio,
                    max_connections=limit if stream_window is None else 1,
                    max_pending_requests=limit,
                    max_requests=limit,
                )
                for prio in (RoutingPriority.DEFAULT, RoutingPriority.HIGH)
            ]
        )
    plain = to_plain(cluster)
    if tls is not None:
        plain["transport_socket"] = upstream_socket(tls, ["h2"], peer_uri=server_identity)
    return plain


def clusters(
    s: FilterSettings,
    server_host: str,
    authz_port: int,
    tap_port: int,
    *,
    tls: SidecarTLS | None = None,
    server_identity: str = "",
) -> list[dict[str, Any]]:
    """The clusters the filters of `s` point at (the authz one only when ext_authz is on); with
    `tls`, both speak mTLS to serve with the sidecar's certificate (grpc_cluster)."""
    out: list[dict[str, Any]] = []
    if not s.installed:
        return out
    if s.with_authz:
        out.append(
            grpc_cluster(
                s.authz_cluster, server_host, authz_port, tls=tls, server_identity=server_identity
            )
        )
    out.append(
        grpc_cluster(
            s.tap_cluster,
            server_host,
            tap_port,
            high_limits=True,
            stream_window=s.tap_stream_window,
            tls=tls,
            server_identity=server_identity,
        )
    )
    return out
