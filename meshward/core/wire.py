"""The sidecar<->server wire contract: every name a sidecar and `meshward serve` agree on.

The renderer (meshward.istio.filters) writes these names into the Envoy config, the ext_authz
conversion (meshward.extauthz) and the Envoy tap (meshward.tap.envoy) read them back, and the node
tap (meshward.tap.node) reads the Linkerd proxy's. One module, so the two ends cannot drift apart
and sources need not import mesh modules for them.

Everything a caller writes (gRPC metadata, `context_extensions`, request headers) is an UNTRUSTED
HINT: whoever can reach meshward's ports or send a request can set it. UNTRUSTED_HINTS lists
them; a security decision derives identities from verified mTLS peers only, never from a hint
(meshward.core.peer: a hint may narrow a verified identity, never widen it).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

# gRPC initial metadata the sidecar's filters send on every Check call and tap stream
METADATA_NAMESPACE: Final = "x-meshward-namespace"
METADATA_WORKLOAD: Final = "x-meshward-workload"
METADATA_DIRECTION: Final = "x-meshward-direction"  # inbound | outbound
METADATA_NODE: Final = "x-meshward-node"  # optional: the node the sidecar runs on
# "true": the tap filter also streams response bodies and trailers (Envoy 1.40 sends no
# protocol_config in observability mode, so the server must be told)
METADATA_TAP_RESPONSE_BODY: Final = "x-meshward-tap-response-body"

# ext_authz `context_extensions` keys, set per virtual host (ExtAuthzPerRoute.check_settings)
CONTEXT_NAMESPACE: Final = "namespace"
CONTEXT_WORKLOAD: Final = "workload"
CONTEXT_DIRECTION: Final = "direction"

# set by Envoy on the request it forwards: the verified client certificate of each hop, one
# element per hop (meshward.core.peer reads the last one, appended by meshward's own sidecar)
XFCC_HEADER: Final = "x-forwarded-client-cert"

# the connection facts the tap filter asks Envoy for (ProcessingRequest.attributes); the tap
# keeps only these, so a stream's attribute table is bounded whatever names arrive
TAP_ATTRIBUTES: Final = (
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "connection.uri_san_peer_certificate",
    "connection.uri_san_local_certificate",
    "request.protocol",
)

# Linkerd's proxy, as the node tap sees it on a pod's loopback: the inbound side listens on 4143
# and forwards to the app on the pod IP over `lo` (since Linkerd 2.11); the app's own calls leave
# through the outbound side on 127.0.0.1:4140; 4191 is the admin port (probes, metrics) and 4190
# the tap/control port: mesh control traffic, never app traffic.
LINKERD_INBOUND_PORT: Final = 4143
LINKERD_OUTBOUND_PORT: Final = 4140
LINKERD_ADMIN_PORT: Final = 4191
LINKERD_CONTROL_PORT: Final = 4190
LINKERD_PROXY_PORTS: Final = frozenset(
    {LINKERD_INBOUND_PORT, LINKERD_OUTBOUND_PORT, LINKERD_ADMIN_PORT, LINKERD_CONTROL_PORT}
)
# the caller's mTLS identity, added by the inbound proxy to the requests it forwards
LINKERD_CLIENT_ID_HEADER: Final = "l5d-client-id"

# Istio's sidecar (istio-proxy), as the node tap sees it: istio-iptables sends a pod's inbound
# TCP (nat PREROUTING -> ISTIO_INBOUND -> ISTIO_IN_REDIRECT) to Envoy's 15006, and the app's own
# calls (OUTPUT -> ISTIO_OUTPUT -> ISTIO_REDIRECT) to 15001; 15008 is HBONE, 15000 Envoy's admin,
# 15004 and 15020 pilot-agent's, 15021 the health port, 15053 the DNS proxy, 15090 Envoy's
# Prometheus stats: mesh traffic, never app traffic. The inbound listener forwards to the app on
# the original address (the pod IP since Istio 1.10) from the "inbound passthrough" bind address
# 127.0.0.6 (::6), which ISTIO_OUTPUT lets through (`-s 127.0.0.6/32 -o lo -j RETURN`) so the
# proxy's own hop is not captured again: that hop on `lo` is the proxy's copy of a request.
ISTIO_INBOUND_PORT: Final = 15006
ISTIO_OUTBOUND_PORT: Final = 15001
ISTIO_PROXY_PORTS: Final = frozenset(
    {15000, ISTIO_OUTBOUND_PORT, 15004, ISTIO_INBOUND_PORT, 15008, 15020, 15021, 15053, 15090}
)
ISTIO_INBOUND_BIND: Final = ("127.0.0.6", "::6")

UNTRUSTED_HINTS: Final = MappingProxyType(
    {
        METADATA_NAMESPACE: "gRPC metadata: the namespace the sidecar says it guards",
        METADATA_WORKLOAD: "gRPC metadata: the workload the sidecar says it guards",
        METADATA_DIRECTION: "gRPC metadata: which side of the call the sidecar says it sits on",
        METADATA_NODE: "gRPC metadata: the node the sidecar says it runs on",
        METADATA_TAP_RESPONSE_BODY: "gRPC metadata: whether response bodies follow on the stream",
        CONTEXT_NAMESPACE: "ext_authz context_extensions: the namespace of the guarded workload",
        CONTEXT_WORKLOAD: "ext_authz context_extensions: the guarded workload",
        CONTEXT_DIRECTION: "ext_authz context_extensions: inbound or outbound",
        LINKERD_CLIENT_ID_HEADER: "request header: the caller's identity; vouched for by Linkerd's "
        "inbound proxy, but any process on the pod's loopback can send it",
        XFCC_HEADER: "gRPC metadata: every element but the last is the caller's writing; the last "
        "is trusted only with By= meshward's own identity (its sidecar appended it)",
    }
)
"""Every caller-written field, with what it claims: a hint to label and route by, never proof."""


def linkerd_client_identity(headers: list[tuple[str, str]]) -> str:
    """The caller's identity as the `l5d-client-id` header gives it, or "" (plaintext caller).

    A hint (see UNTRUSTED_HINTS): good for naming the source, not for trusting it.
    """
    for name, value in headers:
        if name == LINKERD_CLIENT_ID_HEADER:
            return value.strip()
    return ""


# -- how far meshward may lag behind the sidecars' tap copies (the renderers' defaults)

# When meshward falls behind (a CPU-starved server), tap copies queue somewhere. Left to itself
# Envoy puts every stream on the wire at once and they pile up in gRPC core's queue of calls the
# Python server has not accepted yet, which cancels calls beyond ~1,000 (Envoy counts them as
# ext_proc streams_failed / failure_mode_allowed; meshward never sees them). So each sidecar keeps
# at most TAP_STREAM_WINDOW streams open per connection to meshward (one connection per Envoy
# worker) and queues the rest itself (the tap cluster's upstream_rq_pending_*; its
# upstream_cx_overflow counts the window at work, not losses).
TAP_STREAM_WINDOW: Final = 256
# How long Envoy keeps a tap stream after its request ended (ext_proc deferred_close_timeout,
# Envoy's default 5 s) before resetting it: the longest meshward may lag before copies are lost
# (meshward_tap_streams_total{outcome="cut"}, or never seen when still queued; Envoy's ext_proc
# streams_closed also counts streams meshward ended itself, so it is no loss count alone). Longer
# costs sidecar memory for the copies held meanwhile (at most TAP_CIRCUIT_LIMIT of them).
TAP_CLOSE_TIMEOUT_MS: Final = 30_000
