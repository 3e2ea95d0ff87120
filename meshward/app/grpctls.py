"""serve's gRPC transport security: mTLS with its CA (standalone), or plaintext behind its own
Istio sidecar (the XFCC route), or nothing verified (in-process tests only).

The CA lives in one directory: `--grpc-ca-dir`, default `meshward-ca` beside the store. It is
created at first start when absent (ca.key mode 0600); several replicas share one by pointing at
the same directory or at a mounted Secret holding `ca.crt` and `ca.key` (and `revoked`): never
one CA each, or a sidecar's certificate would be trusted by one replica and refused by the next.

Rotation without a restart (`ServingCerts`): serve issues its own server certificate from the CA
(in memory only; one day, renewed after two thirds of it, `SERVER_DAYS`/`RENEW_FRACTION`) and
looks at the CA directory every `WATCH_SECONDS`: when `ca.crt` (the trust bundle: the issuing CA
first, then any other trusted during a rollover) or `ca.key` change it issues itself a new
certificate and trusts the new bundle. gRPC's dynamic credentials hand the new configuration to
the next handshake; connections already open (long-lived Check and tap streams) keep theirs. The
revocation list `revoked` beside them is re-read on change (meshward.runtime.revocations).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from meshward.core.log import event
from meshward.istio.certs import CA_DAYS, CertError, MeshCA
from meshward.runtime.grpcpeer import PeerPolicy
from meshward.runtime.metrics import Problems
from meshward.runtime.revocations import FILE_NAME, Revocations

log = logging.getLogger("meshward.app.grpctls")

CA_DIR_NAME = "meshward-ca"
SERVER_DAYS = 1  # serve's own certificate (openssl counts whole days)
RENEW_FRACTION = 2 / 3  # renewed once this much of its life has passed
WATCH_SECONDS = 1.0  # how often the CA files and the revocation list are looked at (a stat)
RETRY_SECONDS = 10.0  # after a failed renewal (a CA half replaced, openssl failing)
# a connection's handshake is its certificates': serve ends each connection (GOAWAY) after this
# long, letting its streams finish within the grace, so a sidecar's reissued certificate, a CA
# dropped after a rollover, or a serial revoked after its holder got a fresh one reaches every
# connection within minutes, not when the sidecar restarts (Envoy keeps an upstream connection
# after its certificate changed); a reconnect is one handshake, every 2 minutes per sidecar
MAX_CONNECTION_AGE_S = 120.0
CONNECTION_AGE_GRACE_S = 60.0  # longer than a tap stream may last (ServeConfig: 30 s)
SERVER_NAMES = (
    "localhost",
    "meshward",
    "meshward.meshward.svc",
    "meshward.meshward.svc.cluster.local",
)


def ca_dir(db: str, configured: str = "") -> Path:
    """The CA directory: the configured one, else `meshward-ca` beside the store file."""
    if configured:
        return Path(configured)
    if db == ":memory:" or not db:
        raise ValueError("mTLS on the gRPC ports needs a CA directory (--grpc-ca-dir)")
    return Path(db).resolve().parent / CA_DIR_NAME


def _signature(ca: MeshCA) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when ca.crt or ca.key is replaced (a Secret's symlink swap included)."""
    out = []
    for path in (ca.cert, ca.key):
        st = os.stat(path)
        out.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    return tuple(out)


@dataclass(frozen=True)
class Issued:
    """One configuration handed to gRPC: serve's certificate, the trust bundle, and when."""

    config: grpc.ServerCertificateConfiguration
    generation: int
    ca_signature: tuple[tuple[int, int, int, int], ...]
    renew_at: float  # wall-clock seconds
    serial: int
    not_after: float


class ServingCerts:
    """serve's mTLS material, renewed while serve runs; `credentials()` once per port."""

    def __init__(
        self,
        policy: PeerPolicy,
        directory: Path,
        problems: Problems | None = None,
        extra_names: tuple[str, ...] = (),
        renew_seconds: float | None = None,  # tests: renew this often, not by the lifetime
    ) -> None:
        self.policy = policy
        self.problems = problems
        self.extra_names = extra_names
        self.renew_seconds = renew_seconds
        self.ca = MeshCA(directory, days=CA_DAYS, trust_domain=policy.trust_domain)
        self.revocations = Revocations(self.ca.dir / FILE_NAME, problems)
        self.revocations.load()  # unreadable: serve does not start (RevocationError, OSError)
        self.current = self._issue(1)
        event(log, "grpc-mtls", ca=str(self.ca.cert), identity=policy.own.uri)

    def _issue(self, generation: int) -> Issued:
        """serve's certificate from the CA on disk now, and the bundle it trusts, read under
        the CA's lock (where the directory is writable) so a rollover is never seen half done."""
        own = self.policy.own
        with self.ca.locked():
            signature = _signature(self.ca)
            roots = self.ca.cert.read_bytes()
            with tempfile.TemporaryDirectory(prefix="meshward-serve-tls-") as tmp:
                leaf = self.ca.issue(
                    own.namespace,
                    own.service_account,
                    out=Path(tmp),
                    dns=[*SERVER_NAMES, *self.extra_names],
                    ips=["127.0.0.1", "::1"],
                    days=SERVER_DAYS,
                )
                key = Path(leaf.private_key).read_bytes()
                chain = Path(leaf.cert_chain).read_bytes()
        cert = x509.load_pem_x509_certificate(chain)
        born = cert.not_valid_before_utc.timestamp()
        dies = cert.not_valid_after_utc.timestamp()
        life = self.renew_seconds or (dies - born) * RENEW_FRACTION
        config = grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)
        return Issued(config, generation, signature, time.time() + life, cert.serial_number, dies)

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic credentials: gRPC asks before every handshake; a renewal is handed over once
        to each port (each has its own fetcher)."""
        seen = self.current.generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal seen
            current = self.current
            if current.generation == seen:
                return None
            seen = current.generation
            return current.config

        return grpc.dynamic_ssl_server_credentials(
            self.current.config, fetch, require_client_authentication=True
        )

    @staticmethod
    def server_options() -> list[tuple[str, int]]:
        """gRPC server options of an mTLS port (the connection age above)."""
        return [
            ("grpc.max_connection_age_ms", int(MAX_CONNECTION_AGE_S * 1000)),
            ("grpc.max_connection_age_grace_ms", int(CONNECTION_AGE_GRACE_S * 1000)),
        ]

    def due(self) -> bool:
        """Whether serve's certificate must be issued again: the CA files changed, or it is old."""
        try:
            changed = _signature(self.ca) != self.current.ca_signature
        except OSError:  # ca.crt or ca.key missing for a moment (being replaced): later
            return False
        return changed or time.time() >= self.current.renew_at

    def renew(self) -> bool:
        """Issue serve's certificate again (blocking: openssl); False when it failed (kept the
        current one, retried after RETRY_SECONDS)."""
        try:
            fresh = self._issue(self.current.generation + 1)
        except (CertError, OSError) as exc:
            if self.problems is not None:
                self.problems("grpc", "certificate-renewal-failed", error=str(exc)[:300])
            current = self.current
            self.current = Issued(
                current.config,
                current.generation,
                current.ca_signature,
                time.time() + RETRY_SECONDS,
                current.serial,
                current.not_after,
            )
            return False
        self.current = fresh
        event(log, "grpc-certificate-renewed", serial=f"{fresh.serial:x}", ca=str(self.ca.cert))
        return True

    async def watch(self) -> None:
        """Until cancelled: re-read the revocation list when it changes, renew when due."""
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            self.revocations.refresh()
            if self.due():
                await asyncio.to_thread(self.renew)


def announce(policy: PeerPolicy) -> None:
    """Say loudly when the gRPC ports verify less than mTLS does."""
    if policy.kind == "xfcc":
        event(
            log,
            "gRPC ports in PLAINTEXT: callers are trusted only through the "
            "x-forwarded-client-cert element appended by meshward's own Istio sidecar "
            f"(By={policy.own.uri}); run this only behind that sidecar with STRICT mTLS",
            logging.WARNING,
        )
    elif policy.kind == "unverified":
        event(
            log,
            "gRPC ports in PLAINTEXT with NO caller verification: identities come from "
            "caller-written hints (in-process tests only, never a deployment)",
            logging.WARNING,
        )
