"""PeerVerifier's memory of verified peers: bounded, and a remembered refusal raised afresh."""

from __future__ import annotations

import logging
import traceback

import pytest

from meshward.core.peer import Refused, meshward_identity
from meshward.runtime import grpcpeer
from meshward.runtime.grpcpeer import PeerPolicy, PeerVerifier
from meshward.runtime.metrics import Metrics, Problems


def _verifier() -> PeerVerifier:
    return PeerVerifier(PeerPolicy(kind="xfcc"), Problems(Metrics(), logging.getLogger("t")))


def _depth(verifier: PeerVerifier, value: str) -> int:
    with pytest.raises(Refused) as err:
        verifier.sidecar(None, [("x-forwarded-client-cert", value)])  # type: ignore[arg-type]
    return len(traceback.extract_tb(err.value.__traceback__))


def test_a_remembered_refusal_does_not_grow() -> None:
    verifier = _verifier()
    depths = {_depth(verifier, "junk") for _ in range(50)}
    assert len(depths) == 1  # the same traceback every time: no chain of earlier raises


def test_remembered_peers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpcpeer, "_CACHE_LIMIT", 8)
    verifier = _verifier()
    own = meshward_identity()
    for i in range(100):
        header = f"By={own};URI=spiffe://cluster.local/ns/ns{i}/sa/sa"
        peer = verifier.sidecar(None, [("x-forwarded-client-cert", header)])  # type: ignore[arg-type]
        assert peer.namespace == f"ns{i}"
    assert len(verifier._by_xfcc) <= 8
    # a long value (the caller's own elements before the sidecar's) is verified, not remembered
    forged = ",".join(f"By={own};URI=spiffe://cluster.local/ns/x/sa/y" for _ in range(100))
    header = f"{forged},By={own};URI=spiffe://cluster.local/ns/shop/sa/web"
    verifier._by_xfcc.clear()
    for _ in range(3):
        got = verifier.sidecar(None, [("x-forwarded-client-cert", header)])  # type: ignore[arg-type]
        assert got.namespace == "shop"
    assert not verifier._by_xfcc
    with pytest.raises(ValueError, match="trust domain"):
        PeerPolicy(trust_domain="example.org", identity=own)
