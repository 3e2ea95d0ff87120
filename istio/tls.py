"""Envoy TLS transport sockets with SPIFFE identities: the sidecars' mesh mTLS and their mTLS
to `meshward serve` (its ext_authz and tap clusters), as Envoy's snake_case JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TLS_SOCKET = "envoy.transport_sockets.tls"
TLS_DOWNSTREAM = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
TLS_UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass(frozen=True)
class SidecarTLS:
    """mTLS material for one sidecar: its own certificate (SPIFFE URI SAN) and the mesh CA."""

    cert_chain: str  # PEM file paths
    private_key: str
    ca_cert: str
    sni: str = ""  # outbound: server name to ask for


def common_context(tls: SidecarTLS, alpn: list[str], peer_uri: str = "") -> dict[str, Any]:
    """Our certificate, the CA that signs the peer's, and (with `peer_uri`) the one URI SAN
    the peer's certificate must carry, as Istio pins the SPIFFE id it expects."""
    validation: dict[str, Any] = {"trusted_ca": {"filename": tls.ca_cert}}
    if peer_uri:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": peer_uri}}
        ]
    return {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": tls.cert_chain},
                "private_key": {"filename": tls.private_key},
            }
        ],
        "validation_context": validation,
        "alpn_protocols": alpn,
    }


def upstream_socket(
    tls: SidecarTLS, alpn: list[str], *, sni: str = "", peer_uri: str = ""
) -> dict[str, Any]:
    """A cluster's transport_socket: present `tls`'s certificate, verify the server's."""
    context: dict[str, Any] = {"common_tls_context": common_context(tls, alpn, peer_uri)}
    if sni or tls.sni:
        context["sni"] = sni or tls.sni
    return {"name": TLS_SOCKET, "typed_config": {"@type": TLS_UPSTREAM, **context}}


def downstream_socket(tls: SidecarTLS, alpn: list[str]) -> dict[str, Any]:
    """A listener's transport_socket that requires a client certificate from the mesh CA."""
    return {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": TLS_DOWNSTREAM,
            "common_tls_context": common_context(tls, alpn),
            "require_client_certificate": True,
        },
    }
