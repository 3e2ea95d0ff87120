"""Envoy TLS transport sockets with SPIFFE identities: the sidecars' mesh mTLS and their mTLS
to `meshward serve` (its ext_authz and tap clusters), as Envoy's snake_case JSON."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

TLS_SOCKET = "envoy.transport_sockets.tls"
TLS_DOWNSTREAM = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
)
TLS_UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
SDS_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True)
class SidecarTLS:
    """mTLS material for one sidecar: its own certificate (SPIFFE URI SAN) and the mesh CA."""

    cert_chain: str  # PEM file paths
    private_key: str
    ca_cert: str
    sni: str = ""  # outbound: server name to ask for
    # Envoy reads the material through file-based SDS (sds_documents) and re-reads it when the
    # files are replaced (`meshward ca issue/renew`, a CA rollover): no restart
    sds: bool = False

    def sds_paths(self) -> tuple[str, str]:
        """The SDS files of the certificate and of the trust bundle, beside the certificate."""
        stem = self.cert_chain.removesuffix(".crt")
        return f"{stem}.cert.sds.json", f"{stem}.trust.sds.json"

    def secret_names(self) -> tuple[str, str]:
        stem = os.path.basename(self.cert_chain).removesuffix(".crt")
        return f"meshward-{stem}", f"meshward-{stem}-trust"


def sds_documents(tls: SidecarTLS) -> dict[str, dict[str, Any]]:
    """What the two SDS files hold (path -> DiscoveryResponse): the certificate and key, and
    the CA bundle, by file name, each re-read when a file is moved into its directory (writers
    rename new files into place; Envoy reads the certificate and key together and keeps the
    old pair if they do not match yet)."""
    cert_file, trust_file = tls.sds_paths()
    cert_name, trust_name = tls.secret_names()
    return {
        cert_file: {
            "resources": [
                {
                    "@type": SDS_SECRET,
                    "name": cert_name,
                    "tls_certificate": {
                        "certificate_chain": {"filename": tls.cert_chain},
                        "private_key": {"filename": tls.private_key},
                        "watched_directory": {"path": os.path.dirname(tls.cert_chain)},
                    },
                }
            ]
        },
        trust_file: {
            "resources": [
                {
                    "@type": SDS_SECRET,
                    "name": trust_name,
                    "validation_context": {
                        "trusted_ca": {"filename": tls.ca_cert},
                        "watched_directory": {"path": os.path.dirname(tls.ca_cert)},
                    },
                }
            ]
        },
    }


def _from_file(name: str, path: str) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {"path_config_source": {"path": path}, "resource_api_version": "V3"},
    }


def common_context(tls: SidecarTLS, alpn: list[str], peer_uri: str = "") -> dict[str, Any]:
    """Our certificate, the CA that signs the peer's, and (with `peer_uri`) the one URI SAN
    the peer's certificate must carry, as Istio pins the SPIFFE id it expects."""
    validation: dict[str, Any] = {} if tls.sds else {"trusted_ca": {"filename": tls.ca_cert}}
    if peer_uri:
        validation["match_typed_subject_alt_names"] = [
            {"san_type": "URI", "matcher": {"exact": peer_uri}}
        ]
    if tls.sds:
        cert_file, trust_file = tls.sds_paths()
        cert_name, trust_name = tls.secret_names()
        return {
            "tls_certificate_sds_secret_configs": [_from_file(cert_name, cert_file)],
            "combined_validation_context": {
                "default_validation_context": validation,
                "validation_context_sds_secret_config": _from_file(trust_name, trust_file),
            },
            "alpn_protocols": alpn,
        }
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
