"""A throwaway mesh CA (the openssl CLI) issuing SPIFFE workload certificates, as istiod does.

Sidecars started by the demo and the tests use them for mTLS, so that Envoy hands meshward the
caller's real principal (`spiffe://cluster.local/ns/NS/sa/SA`) in every CheckRequest.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from meshward.istio.bootstrap import SidecarTLS

TRUST_DOMAIN = "cluster.local"


class CertError(RuntimeError):
    """openssl is missing or failed."""


def spiffe_id(namespace: str, service_account: str, trust_domain: str = TRUST_DOMAIN) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise CertError("openssl not found (apt-get install openssl)")
    done = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise CertError(f"openssl {args[0]} failed: {done.stderr.strip()[-300:]}")


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


class MeshCA:
    """A CA in `directory` (created on first use); `issue` writes one workload's key and cert."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.crt"
        self.key = self.dir / "ca.key"
        if not self.cert.exists():
            _openssl(
                "req",
                "-x509",
                *_EC,
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/O=meshward/CN=meshward mesh CA",
                cwd=self.dir,
            )

    def issue(self, namespace: str, service_account: str) -> SidecarTLS:
        """Key and certificate for `namespace/service_account` with its SPIFFE URI SAN."""
        name = f"{namespace}.{service_account}"
        ext = self.dir / f"{name}.ext"
        ext.write_text(
            f"subjectAltName=URI:{spiffe_id(namespace, service_account)},"
            f"DNS:{service_account}.{namespace}.svc.cluster.local\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
        )
        _openssl(
            "req",
            *_EC,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/O=meshward/CN={service_account}.{namespace}",
            cwd=self.dir,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            ext.name,
            "-out",
            f"{name}.crt",
            cwd=self.dir,
        )
        return SidecarTLS(
            cert_chain=str(self.dir / f"{name}.crt"),
            private_key=str(self.dir / f"{name}.key"),
            ca_cert=str(self.cert),
        )
