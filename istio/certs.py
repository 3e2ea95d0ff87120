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
import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from meshward.core.peer import DEFAULT_TRUST_DOMAIN
from meshward.istio.tls import SidecarTLS, sds_documents

if TYPE_CHECKING:
    from meshward.core.revocation import Revocation, RevocationList

TRUST_DOMAIN = DEFAULT_TRUST_DOMAIN
CA_DAYS = 3650  # a CA serve or `envoy bootstrap` creates (rotated with `meshward ca rollover`)
# a sidecar's certificate (`envoy bootstrap`, `meshward ca issue`): short, so revocation is a
# backstop; `meshward ca renew` (daily) reissues those past two thirds of their life
WORKLOAD_DAYS = 7
NEXT_CERT, NEXT_KEY = "next.crt", "next.key"  # the CA a rollover introduces, until `switch`
ISSUED_DIR = "issued"  # where `envoy bootstrap` writes the sidecars' certificates by default
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----\r?\n?", re.S)


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


def certificates(pem: bytes) -> list[bytes]:
    """The PEM certificates of a bundle, in order."""
    return [m.group(0).rstrip(b"\r\n") + b"\n" for m in _PEM_CERT.finditer(pem)]


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`data` in `path` by a rename, so a reader (serve, Envoy's watch) sees all of it or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The CA's lock (issuing, rollover steps, revocations: one at a time across processes
        and replicas sharing the directory); a read-only directory (a mounted Secret, which
        the kubelet swaps whole) has none to take. Not re-entrant: `issue` does not take it."""
        try:
            lock = open(self.dir / ".ca.lock", "a")  # noqa: SIM115 (closed below)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES):
                raise
            yield
            return
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _create(self, key_name: str = "ca.key", cert_name: str = "ca.crt") -> None:
        """A CA key and certificate, made in a private temp dir and renamed into place (key
        first)."""
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
            os.replace(work / "ca.key", self.dir / key_name)
            os.replace(work / "ca.crt", self.dir / cert_name)

    # -- rollover: a new CA trusted beside the old, then issuing, then the old one dropped --

    def bundle(self) -> list[bytes]:
        """The trusted CA certificates (ca.crt), the issuing one first."""
        return certificates(self.cert.read_bytes())

    def rollover_start(self) -> bytes:
        """A new CA (next.crt, next.key), trusted beside the current one (appended to ca.crt):
        everything reading ca.crt trusts both before anything is issued from the new one."""
        with self.locked():
            if (self.dir / NEXT_KEY).exists():
                raise CertError("a rollover is under way already: `meshward ca rollover switch`")
            self._create(NEXT_KEY, NEXT_CERT)
            new = certificates((self.dir / NEXT_CERT).read_bytes())
            write_atomic(self.cert, b"".join([*self.bundle(), *new]))
            return new[0]

    def rollover_switch(self) -> None:
        """Issue from the new CA: ca.key is the new key, ca.crt the new CA first and the old
        ones after it (still trusted until `rollover_finish`)."""
        with self.locked():
            next_key = self.dir / NEXT_KEY
            if not next_key.exists():
                raise CertError("no rollover under way: `meshward ca rollover start` first")
            new = certificates((self.dir / NEXT_CERT).read_bytes())[0]
            rest = [c for c in self.bundle() if c != new]
            key = next_key.read_bytes()
            write_atomic(self.key, key, 0o600)
            write_atomic(self.cert, b"".join([new, *rest]))
            next_key.unlink()
            (self.dir / NEXT_CERT).unlink()

    def rollover_finish(self) -> int:
        """Trust the issuing CA only (ca.crt's first certificate); how many were dropped."""
        with self.locked():
            if (self.dir / NEXT_KEY).exists():
                raise CertError("the new CA does not issue yet: `meshward ca rollover switch`")
            bundle = self.bundle()
            if len(bundle) > 1:
                write_atomic(self.cert, bundle[0])
            return len(bundle) - 1

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

    # -- reissuing and revoking workload certificates --------------------------------------

    def reissue(self, cert_path: Path, days: int | None = None) -> SidecarTLS:
        """The same workload's certificate again (its SPIFFE id, DNS names and addresses), from
        the issuing CA now, over the files Envoy watches; `days` default: its old lifetime."""
        from cryptography import x509

        from meshward.core.peer import parse_spiffe

        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CertError(f"{cert_path}: no subjectAltName: not a workload certificate") from None
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        spiffe = parse_spiffe(uris[0]) if len(uris) == 1 else None
        if spiffe is None or spiffe.trust_domain != self.trust_domain:
            raise CertError(f"{cert_path}: not a workload certificate of {self.trust_domain}")
        if Path(cert_path).name != f"{spiffe.namespace}.{spiffe.service_account}.crt":
            raise CertError(f"{cert_path}: not named NAMESPACE.SERVICE-ACCOUNT.crt")
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        return self.issue(
            spiffe.namespace,
            spiffe.service_account,
            out=Path(cert_path).parent,
            dns=sans.get_values_for_type(x509.DNSName),
            ips=[str(ip) for ip in sans.get_values_for_type(x509.IPAddress)],
            days=days or max(1, round(life.total_seconds() / 86400)),
        )

    def revocation_file(self) -> Path:
        from meshward.runtime.revocations import FILE_NAME

        return self.dir / FILE_NAME

    def revoke(self, entry: Revocation) -> RevocationList:
        """Add `entry` to the revocation list (a rename: every replica re-reads it whole). A
        list on disk that does not parse is not overwritten: fix it first."""
        from meshward.core.revocation import RevocationList, parse

        path = self.revocation_file()
        with self.locked():
            try:
                current = parse(path.read_bytes())
            except FileNotFoundError:
                current = RevocationList()
            updated = current.with_entry(entry)
            write_atomic(path, updated.render().encode())
        return updated


def write_sds(tls: SidecarTLS) -> SidecarTLS:
    """`tls` served to Envoy through file-based SDS: the two SDS files written beside the
    certificate (by a rename), and the material marked so the bootstrap points at them."""
    served = dataclasses.replace(tls, sds=True)
    for path, document in sds_documents(served).items():
        write_atomic(Path(path), json.dumps(document, indent=1).encode())
    return served
