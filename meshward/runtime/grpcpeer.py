"""The verified caller of a gRPC call: one mechanism both doors (ext_authz Check, the tap) use.

Three policies, one per way the sidecars reach serve:
- `mtls` (standalone, the CLI's default): serve terminates mTLS with its CA; the caller is the
  one SPIFFE URI SAN of the client certificate gRPC verified, unless serve's revocation list
  (meshward.runtime.revocations) refuses that certificate.
- `xfcc` (the Istio route): serve listens in plaintext behind its own Istio sidecar (STRICT
  PeerAuthentication); the caller is the URI of the last `x-forwarded-client-cert` element, and
  only if its `By=` is meshward's own identity (meshward.core.peer.xfcc_identity).
- `unverified`: no peer identity at all; the destination comes from the hints. For in-process
  tests and benches of other features only: the CLI never offers it and serve logs it loudly.

A refused peer is counted (`meshward_errors_total{where, kind="peer-<reason>"}`) and logged
(rate-limited, with the gRPC peer address); the caller aborts the call and nothing is learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

import grpc
from cryptography import x509

from meshward.core.peer import (
    DEFAULT_TRUST_DOMAIN,
    XFCC_HEADER,
    Refused,
    SpiffeId,
    WorkloadBinding,
    certificate_identity,
    guarded,
    meshward_identity,
    parse_spiffe,
    xfcc_identity,
)
from meshward.runtime.metrics import Problems
from meshward.runtime.revocations import Revocations

PolicyKind = Literal["mtls", "xfcc", "unverified"]
_CACHE_LIMIT = 4096  # distinct certificates / XFCC values remembered (a mesh has few)
# an XFCC value longer than this is verified on every call, not remembered: the elements before
# the sidecar's are the caller's writing (up to core.peer.MAX_XFCC each), so remembering them
# would let one caller fill 4096 x 64 KiB; the sidecar's own element is a few hundred bytes
_CACHE_XFCC_BYTES = 2048


@dataclass(frozen=True)
class PeerPolicy:
    """How serve learns who calls its gRPC ports, and its own identity (the XFCC `By=`)."""

    kind: PolicyKind = "mtls"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    identity: str = ""  # serve's own SPIFFE id; default core.peer.meshward_identity(trust_domain)

    def __post_init__(self) -> None:
        if self.own.trust_domain != self.trust_domain:
            raise ValueError(f"{self.own} is not in the trust domain {self.trust_domain!r}")

    @property
    def own(self) -> SpiffeId:
        uri = self.identity or meshward_identity(self.trust_domain)
        spiffe = parse_spiffe(uri)
        if spiffe is None:
            raise ValueError(f"{uri!r} is not a SPIFFE id spiffe://TD/ns/NS/sa/SA")
        return spiffe


UNVERIFIED = PeerPolicy(kind="unverified")

_K = TypeVar("_K")
_V = TypeVar("_V")

Metadata = Sequence[tuple[str, str | bytes]]


class PeerVerifier:
    """The verified sidecar behind one call, and the workload it guards (core.peer's rule)."""

    def __init__(
        self,
        policy: PeerPolicy,
        problems: Problems,
        binding: WorkloadBinding | None = None,
        revocations: Revocations | None = None,
    ) -> None:
        self.policy = policy
        self.problems = problems
        self.binding = binding
        # mtls: serve's revocation list; while it is empty a call pays nothing for it, else the
        # certificate itself (serial, notBefore) is checked on every call, not per connection:
        # a revocation reaches calls on connections that were open before it
        self.revocations = revocations
        self.own = policy.own
        # what a certificate's SANs / an XFCC value resolved to: verifying once per peer, not
        # per call (gRPC's auth context costs ~10 us to build; the SAN list ~0.6 us). The SAN
        # list mixes DNS and URI names: two certificates of the CA with the same values in
        # different SAN types would share an entry; the CA only ever issues one URI SAN.
        self._by_sans: dict[tuple[bytes, ...], SpiffeId | Refused] = {}
        self._by_xfcc: dict[tuple[str, ...], SpiffeId | Refused] = {}
        self._by_pem: dict[bytes, tuple[SpiffeId, int, datetime] | Refused] = {}

    @property
    def verifies(self) -> bool:
        return self.policy.kind != "unverified"

    def sidecar(self, context: grpc.aio.ServicerContext, metadata: Metadata | None) -> SpiffeId:
        """The calling sidecar's verified identity; Refused otherwise (unverified: never called)."""
        if self.policy.kind == "mtls":
            return self._from_certificate(context)
        return self._from_xfcc(metadata or ())

    def _from_certificate(self, context: grpc.aio.ServicerContext) -> SpiffeId:
        revocations = self.revocations
        if revocations is not None and revocations.active:
            return self._unrevoked(context, revocations)
        sans = tuple(context.peer_identities() or ())
        known = self._by_sans.get(sans)
        if known is None:
            auth = context.auth_context()
            if not auth.get("x509_pem_cert"):
                known = Refused("no-certificate", "no verified client certificate")
            else:
                uris = [u.decode("utf-8", "replace") for u in auth.get("peer_uri", ())]
                try:
                    known = certificate_identity(uris, self.policy.trust_domain)
                except Refused as exc:
                    known = exc
            _remember(self._by_sans, sans, known)
        if isinstance(known, Refused):
            raise _fresh(known)
        return known

    def _unrevoked(self, context: grpc.aio.ServicerContext, revocations: Revocations) -> SpiffeId:
        """The certificate's identity, unless the revocation list refuses it (or is unreadable)."""
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if not pems:
            raise Refused("no-certificate", "no verified client certificate")
        known = self._by_pem.get(pems[0])
        if known is None:
            uris = [u.decode("utf-8", "replace") for u in auth.get("peer_uri", ())]
            try:
                spiffe = certificate_identity(uris, self.policy.trust_domain)
                cert = x509.load_pem_x509_certificate(pems[0])
                known = (spiffe, cert.serial_number, cert.not_valid_before_utc)
            except Refused as exc:
                known = exc
            except ValueError as exc:  # gRPC verified it: cannot happen, but never a crash
                known = Refused("no-certificate", f"unreadable certificate: {exc}"[:200])
            _remember(self._by_pem, pems[0], known)
        if isinstance(known, Refused):
            raise _fresh(known)
        spiffe, serial, not_before = known
        refused = revocations.refusal(spiffe, serial, not_before)
        if refused is not None:
            raise refused
        return spiffe

    def _from_xfcc(self, metadata: Metadata) -> SpiffeId:
        values = tuple(
            v if isinstance(v, str) else v.decode("latin-1")
            for k, v in metadata
            if k == XFCC_HEADER
        )
        known = self._by_xfcc.get(values)
        if known is None:
            try:
                known = xfcc_identity(list(values), self.own)
            except Refused as exc:
                known = exc
            if sum(map(len, values)) <= _CACHE_XFCC_BYTES:
                _remember(self._by_xfcc, values, known)
        if isinstance(known, Refused):
            raise _fresh(known)
        return known

    def guarded(self, peer: SpiffeId, namespace_hint: str, workload_hint: str) -> tuple[str, str]:
        return guarded(peer, namespace_hint, workload_hint, self.binding)

    def refused(self, door: str, exc: Refused, context: grpc.aio.ServicerContext) -> None:
        """Count and log one refusal (the peer address only: never the metadata)."""
        self.problems(door, f"peer-{exc.reason}", detail=exc.detail, peer=_peer(context))


def _fresh(cached: Refused) -> Refused:
    """A new exception for a remembered refusal: raising the cached one again would chain every
    earlier raise's traceback onto it, growing without bound."""
    return Refused(cached.reason, cached.detail)


def _peer(context: grpc.aio.ServicerContext) -> str:
    try:
        return str(context.peer())[:80]
    except Exception:  # a context without a peer (tests): the log line still says why
        return ""


def _remember(table: dict[_K, _V], key: _K, value: _V) -> None:
    if len(table) >= _CACHE_LIMIT:
        table.pop(next(iter(table)))
    table[key] = value
