"""mTLS clients of serve's gRPC ports: channels with a sidecar's certificate, certificates with
odd subject alternative names (none, several, not SPIFFE) signed by a real CA, and the
certificate serve presents to a new connection."""

from __future__ import annotations

import secrets
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc
from cryptography import x509

from meshward.istio.certs import MeshCA
from meshward.istio.tls import SidecarTLS


def credentials(tls: SidecarTLS) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        Path(tls.ca_cert).read_bytes(),
        Path(tls.private_key).read_bytes(),
        Path(tls.cert_chain).read_bytes(),
    )


def aio_channel(port: int, tls: SidecarTLS | None) -> grpc.aio.Channel:
    """A channel to serve on loopback: mTLS with `tls`'s certificate, plaintext with None."""
    target = f"127.0.0.1:{port}"
    if tls is None:
        return grpc.aio.insecure_channel(target)
    options = [("grpc.ssl_target_name_override", "localhost")]
    return grpc.aio.secure_channel(target, credentials(tls), options=options)


def server_only_channel(port: int, ca_cert: str) -> grpc.aio.Channel:
    """TLS that verifies serve but presents no client certificate."""
    creds = grpc.ssl_channel_credentials(Path(ca_cert).read_bytes())
    options = [("grpc.ssl_target_name_override", "localhost")]
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options)


def odd_certificate(ca: MeshCA, out: Path, name: str, sans: Sequence[str]) -> SidecarTLS:
    """A client certificate `ca` signs with exactly these SANs (`URI:...`, `DNS:...`; none: no
    subjectAltName extension at all)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        ext = "extendedKeyUsage=clientAuth,serverAuth\nkeyUsage=critical,digitalSignature\n"
        if sans:
            ext += f"subjectAltName={','.join(sans)}\n"
        (work / "leaf.ext").write_text(ext)
        serial = secrets.randbits(63)
        for command in (
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout k -out csr "
            f"-subj /CN={name}",
            f"x509 -req -in csr -CA {ca.cert} -CAkey {ca.key} -set_serial {serial} -days 1 "
            "-extfile leaf.ext -out c",
        ):
            subprocess.run(["openssl", *command.split()], cwd=work, check=True, capture_output=True)
        (work / "k").rename(out / f"{name}.key")
        (work / "c").rename(out / f"{name}.crt")
    return SidecarTLS(str(out / f"{name}.crt"), str(out / f"{name}.key"), str(ca.cert))


def server_certificate(port: int, tls: SidecarTLS) -> x509.Certificate:
    """The certificate serve presents to a new connection now (one TLS handshake on loopback,
    presenting `tls`'s client certificate and trusting its CA bundle; blocking)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(tls.ca_cert)
    context.load_cert_chain(tls.cert_chain, tls.private_key)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
