"""A mesh CA (the openssl CLI) issuing SPIFFE workload certificates, as istiod does.

Two users: `meshward serve` keeps its CA in its state directory (or one shared by every replica,
from a Secret or a directory option) and terminates mTLS on its gRPC ports with a certificate it
issues itself at start; `meshward envoy bootstrap`, the demo and the tests issue the sidecars'
certificates from the same CA, so Envoy hands meshward the caller's real principal
(`spiffe://cluster.local/ns/NS/sa/SA`) and serve knows which sidecar calls it.

The CA key is written with mode 0600, and a key every user may read is refused. Replicas starting
together on one directory create one CA: the first takes a lock, the others wait and load it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from meshward.core.peer import DEFAULT_TRUST_DOMAIN
from meshward.istio.tls import SidecarTLS

TRUST_DOMAIN = DEFAULT_TRUST_DOMAIN
CA_DAYS = 3650  # a CA serve or `envoy bootstrap` creates (rotation: replace ca.crt/ca.key)
WORKLOAD_DAYS = 365  # a sidecar's certificate `envoy bootstrap` issues


class CertError(RuntimeError):
    """openssl is missing or failed, or the CA on disk is unusable."""


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


def _private(path: Path) -> None:
    os.chmod(path, 0o600)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".ca.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class MeshCA:
    """A CA in `directory`: loaded when `ca.crt` and `ca.key` are there (a Secret mounted there,
    or an earlier start), else created (with `create`); `issue` writes one workload's key and
    certificate (into `out`, default the CA's directory)."""

    def __init__(
        self,
        directory: Path,
        *,
        create: bool = True,
        days: int = 2,
        trust_domain: str = TRUST_DOMAIN,
    ) -> None:
        self.dir = Path(directory).absolute()
        self.days = days
        self.trust_domain = trust_domain
        self.cert = self.dir / "ca.crt"
        self.key = self.dir / "ca.key"
        if not (self.cert.exists() and self.key.exists()):
            if not create:
                raise CertError(f"no CA in {self.dir} (ca.crt and ca.key)")
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with _locked(self.dir):
                if not (self.cert.exists() and self.key.exists()):  # another replica's, now
                    self._create()
        mode = stat.S_IMODE(os.stat(self.key).st_mode)
        if mode & 0o007:  # group may read: a Secret mounted for the pod's fsGroup
            raise CertError(
                f"{self.key} may be read by others (mode {mode:o}): chmod 600 it "
                "(a Kubernetes Secret: defaultMode 0400)"
            )

    def _create(self) -> None:
        """ca.key and ca.crt, made in a private temp dir and renamed into place (key first)."""
        with tempfile.TemporaryDirectory(dir=self.dir, prefix=".ca-") as tmp:
            work = Path(tmp)
            _openssl(
                "req",
                "-x509",
                *_EC,
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                str(self.days),
                "-subj",
                "/O=meshward/CN=meshward mesh CA",
                "-addext",
                "basicConstraints=critical,CA:true",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                cwd=work,
            )
            _private(work / "ca.key")
            os.replace(work / "ca.key", self.key)
            os.replace(work / "ca.crt", self.cert)

    def issue(
        self,
        namespace: str,
        service_account: str,
        *,
        out: Path | None = None,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        days: int | None = None,
    ) -> SidecarTLS:
        """Key and certificate for `namespace/service_account`: its SPIFFE URI SAN (the only
        URI SAN, as an X.509 SVID has), plus `dns` names (default the service's) and `ips`."""
        where = Path(out).absolute() if out is not None else self.dir
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{namespace}.{service_account}"
        names = list(dns) or [f"{service_account}.{namespace}.svc.cluster.local"]
        sans = [f"URI:{spiffe_id(namespace, service_account, self.trust_domain)}"]
        sans += [f"DNS:{d}" for d in names] + [f"IP:{ip}" for ip in ips]
        with tempfile.TemporaryDirectory(dir=where, prefix=".issue-") as tmp:
            work = Path(tmp)
            (work / "leaf.ext").write_text(
                f"subjectAltName={','.join(sans)}\n"
                "basicConstraints=critical,CA:false\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
            )
            _openssl(
                "req",
                *_EC,
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                f"/O=meshward/CN={service_account}.{namespace}",
                cwd=work,
            )
            _openssl(
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                str(self.cert.resolve()),
                "-CAkey",
                str(self.key.resolve()),
                "-set_serial",
                str(int.from_bytes(os.urandom(16), "big") >> 1),
                "-days",
                str(days or self.days),
                "-extfile",
                "leaf.ext",
                "-out",
                "leaf.crt",
                cwd=work,
            )
            _private(work / "leaf.key")
            os.replace(work / "leaf.key", where / f"{name}.key")
            os.replace(work / "leaf.crt", where / f"{name}.crt")
        return SidecarTLS(
            cert_chain=str(where / f"{name}.crt"),
            private_key=str(where / f"{name}.key"),
            ca_cert=str(self.cert),
        )
