"""The sidecar<->server wire contract: Linkerd's facts, and every caller-written name a hint."""

from __future__ import annotations

from meshward.core import wire


def test_linkerd_ports_and_identity() -> None:
    assert wire.LINKERD_INBOUND_PORT in wire.LINKERD_PROXY_PORTS
    assert wire.LINKERD_ADMIN_PORT in wire.LINKERD_PROXY_PORTS
    assert 8080 not in wire.LINKERD_PROXY_PORTS
    headers = [("x", "1"), ("l5d-client-id", " web.shop.serviceaccount.identity.l ")]
    assert wire.linkerd_client_identity(headers) == "web.shop.serviceaccount.identity.l"
    assert wire.linkerd_client_identity([("x", "1")]) == ""


def test_every_caller_written_name_is_an_untrusted_hint() -> None:
    """Metadata, context_extensions, the identity header and the XFCC elements a caller sends are
    hints; the reason header and the tap attributes (Envoy's own connection facts) are not
    written by the caller."""
    written = {
        value
        for name, value in vars(wire).items()
        if name.startswith(("METADATA_", "CONTEXT_"))
        or name in ("LINKERD_CLIENT_ID_HEADER", "XFCC_HEADER")
    }
    assert written == set(wire.UNTRUSTED_HINTS)
    assert not set(wire.TAP_ATTRIBUTES) & set(wire.UNTRUSTED_HINTS)
    assert all(wire.UNTRUSTED_HINTS.values())  # each says what it claims
