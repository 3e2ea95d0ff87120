"""serve's gRPC transport security: mTLS with its CA (standalone), or plaintext behind its own
Istio sidecar (the XFCC route), or nothing verified (in-process tests only).

The CA lives in one directory: `--grpc-ca-dir`, default `meshward-ca` beside the store. It is
created at first start when absent (ca.key mode 0600); several replicas share one by pointing at
the same directory or at a mounted Secret holding `ca.crt` and `ca.key`: never one CA each, or a
sidecar's certificate would be trusted by one replica and refused by the next. Each start issues
serve's own short-lived server certificate from it (held in memory only): the SPIFFE id of the
policy (`spiffe://<trust-domain>/ns/meshward/sa/meshward` by default), the names a sidecar or a
client dials serve by, and loopback.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import grpc

from meshward.core.log import event
from meshward.istio.certs import CA_DAYS, MeshCA
from meshward.runtime.grpcpeer import PeerPolicy

log = logging.getLogger("meshward.app.grpctls")

CA_DIR_NAME = "meshward-ca"
SERVER_DAYS = 30  # serve's own certificate, issued again at every start
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


def server_credentials(
    policy: PeerPolicy, directory: Path, extra_names: tuple[str, ...] = ()
) -> grpc.ServerCredentials:
    """mTLS credentials: serve's certificate from the CA in `directory` (created if absent), and
    a client certificate from the same CA required of every caller."""
    ca = MeshCA(directory, days=CA_DAYS, trust_domain=policy.trust_domain)
    own = policy.own
    with tempfile.TemporaryDirectory(prefix="meshward-serve-tls-") as tmp:
        leaf = ca.issue(
            own.namespace,
            own.service_account,
            out=Path(tmp),
            dns=[*SERVER_NAMES, *extra_names],
            ips=["127.0.0.1", "::1"],
            days=SERVER_DAYS,
        )
        key = Path(leaf.private_key).read_bytes()
        cert = Path(leaf.cert_chain).read_bytes()
    event(log, "grpc-mtls", ca=str(ca.cert), identity=own.uri)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca.cert.read_bytes(), require_client_auth=True
    )


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
