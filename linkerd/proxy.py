"""Linkerd proxy facts the node tap relies on (ports, headers), as plain data and pure helpers.

The proxy's inbound side listens on 4143 and forwards to the app on the pod IP over `lo` (since
Linkerd 2.11); the app's own calls leave through the outbound side on 127.0.0.1:4140; 4191 is
the admin port (probes, metrics) and 4190 the tap/control port: mesh control traffic, never app
traffic. The proxy adds `l5d-client-id` (the caller's mTLS identity) to inbound requests.
"""

from __future__ import annotations

INBOUND_PORT = 4143
OUTBOUND_PORT = 4140
ADMIN_PORT = 4191
CONTROL_PORT = 4190
MESH_PORTS: frozenset[int] = frozenset({INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT, CONTROL_PORT})
CLIENT_ID_HEADER = "l5d-client-id"


def is_app_port(port: int) -> bool:
    """True for a TCP port that can carry proxy↔app traffic on the pod's loopback."""
    return 0 < port < 65536 and port not in MESH_PORTS


def client_identity(headers: list[tuple[str, str]]) -> str:
    """The caller's mTLS identity the inbound proxy vouched for, or "" (plaintext caller)."""
    for name, value in headers:
        if name == CLIENT_ID_HEADER:
            return value.strip()
    return ""
