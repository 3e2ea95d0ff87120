"""`meshward ca`: serve's CA (standalone mTLS): issue and renew the sidecars' certificates, roll
the CA over, revoke a leaked certificate, show what is there. serve and Envoy pick every change
up from the files without a restart (docs/security.md, "Rotation and revocation")."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from meshward.app.commands import UsageError, plural

if TYPE_CHECKING:
    from cryptography import x509

    from meshward.istio.certs import MeshCA

RENEW_FRACTION = 2 / 3  # `ca renew` reissues certificates past this much of their life


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "ca",
        help="serve's mTLS CA: issue, renew, revoke certificates; roll the CA over",
        description="serve's CA for mTLS on the gRPC ports (standalone). serve re-reads the CA "
        "files and the revocation list while it runs; Envoy (from `meshward envoy bootstrap`) "
        "re-reads its certificate when it is reissued: no restart.",
    )
    sub = p.add_subparsers(dest="ca_command", metavar="SUBCOMMAND")
    sub.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument(
            "--ca-dir",
            default=os.environ.get("MESHWARD_GRPC_CA_DIR") or "meshward-ca",
            metavar="DIR",
            help="the CA directory, serve's --grpc-ca-dir (env MESHWARD_GRPC_CA_DIR; meshward-ca)",
        )
        c.add_argument("--trust-domain", default="cluster.local", help="(cluster.local)")
        return c

    i = command("issue", "issue (or reissue) one workload's certificate")
    i.add_argument("--namespace", required=True)
    i.add_argument("--service-account", required=True)
    i.add_argument("--cert-dir", metavar="DIR", help="where to write it (CA-DIR/issued)")
    i.add_argument("--days", type=int, help="lifetime in days (7)")
    i.set_defaults(func=issue)

    r = command("renew", "reissue the certificates past 2/3 of their life (every one: --all)")
    r.add_argument(
        "--cert-dir",
        action="append",
        metavar="DIR",
        help="a directory of NS.SA.crt certificates (CA-DIR/issued; repeatable)",
    )
    r.add_argument("--all", action="store_true", help="every certificate (after a CA switch)")
    r.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help="keep running, renewing what is due this often (e.g. 3600), instead of a cron job",
    )
    r.set_defaults(func=renew)

    v = command("revoke", "add a certificate or an identity to the revocation list")
    what = v.add_mutually_exclusive_group(required=True)
    what.add_argument("--serial", metavar="HEX", help="the certificate's serial number")
    what.add_argument("--cert", metavar="FILE", help="the certificate itself (its serial)")
    what.add_argument(
        "--id",
        metavar="SPIFFE_ID",
        help="every certificate of this identity issued until now (issue a fresh one after)",
    )
    v.add_argument("--reason", default="", help="free text, kept in the list")
    v.set_defaults(func=revoke)

    o = command("rollover", "replace the CA: start (trust a new one), switch, finish")
    o.add_argument(
        "step",
        choices=("start", "switch", "finish"),
        help="start: a new CA trusted beside the old; switch: issue from the new one and "
        "reissue CA-DIR/issued; finish: trust the new one only",
    )
    o.set_defaults(func=rollover)

    s = command("status", "the trusted CAs, the issued certificates, the revocation list")
    s.set_defaults(func=status)


def _ca(args: argparse.Namespace, create: bool = False) -> MeshCA:
    from meshward.istio.certs import CA_DAYS, CertError, MeshCA

    try:
        return MeshCA(
            Path(args.ca_dir), create=create, days=CA_DAYS, trust_domain=args.trust_domain
        )
    except (CertError, OSError) as exc:
        raise UsageError(str(exc)) from None


def issue(args: argparse.Namespace) -> int:
    from meshward.core.names import is_kubernetes_name
    from meshward.istio.certs import ISSUED_DIR, WORKLOAD_DAYS, CertError

    if not is_kubernetes_name(args.namespace) or not all(
        is_kubernetes_name(p) for p in args.service_account.split(".")
    ):
        raise UsageError("--namespace and --service-account must be Kubernetes names")
    if args.days is not None and not 1 <= args.days <= 3650:
        raise UsageError("--days must be 1..3650")
    ca = _ca(args, create=True)
    after_revocation(ca, f"spiffe://{args.trust_domain}/ns/{args.namespace}/sa/")
    try:
        with ca.locked():
            tls = ca.issue(
                args.namespace,
                args.service_account,
                out=Path(args.cert_dir) if args.cert_dir else ca.dir / ISSUED_DIR,
                days=args.days or WORKLOAD_DAYS,
            )
    except (CertError, OSError) as exc:
        raise UsageError(f"cannot issue: {exc}") from None
    print(f"issued {tls.cert_chain} ({tls.private_key}, mode 0600)")
    return 0


def after_revocation(ca: MeshCA, prefix: str) -> None:
    """An identity revoked this second would refuse a certificate issued the same second
    (notBefore has whole seconds): wait for the next one."""
    from meshward.core.revocation import RevocationError, parse

    try:
        listed = parse(ca.revocation_file().read_bytes())
    except (OSError, RevocationError):
        return
    now = datetime.now(UTC).replace(microsecond=0)
    if any(e.kind == "id" and e.value.startswith(prefix) and e.at >= now for e in listed.entries):
        time.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)


def _due(path: Path) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    born = cert.not_valid_before_utc.timestamp()
    dies = cert.not_valid_after_utc.timestamp()
    return time.time() >= born + (dies - born) * RENEW_FRACTION


def _reissue_all(ca: MeshCA, dirs: list[Path], everything: bool) -> tuple[int, list[str]]:
    from meshward.istio.certs import CertError

    done, failed = 0, []
    for directory in dirs:
        for path in sorted(directory.glob("*.crt")):
            try:
                if everything or _due(path):
                    with ca.locked():
                        ca.reissue(path)
                    done += 1
            except (CertError, OSError, ValueError) as exc:
                failed.append(f"{path}: {exc}")
    return done, failed


def renew(args: argparse.Namespace) -> int:
    from meshward.istio.certs import ISSUED_DIR

    if args.every is not None and not 1 <= args.every <= 86400:
        raise UsageError("--every must be 1..86400 seconds")
    ca = _ca(args)
    dirs = [Path(d) for d in args.cert_dir] if args.cert_dir else [ca.dir / ISSUED_DIR]
    everything = args.all
    while True:
        done, failed = _reissue_all(ca, dirs, everything)
        for line in failed:
            print(f"meshward ca renew: skipped {line}", file=sys.stderr)
        print(f"renewed {plural(done, 'certificate')}", flush=True)
        if args.every is None:
            return 1 if failed else 0
        everything = False  # --all once, then what is due
        time.sleep(args.every)


def revoke(args: argparse.Namespace) -> int:
    from cryptography import x509

    from meshward.core.revocation import RevocationError, entry

    ca = _ca(args)
    now = datetime.now(UTC)
    try:
        if args.cert:
            cert = x509.load_pem_x509_certificate(Path(args.cert).read_bytes())
            made = entry("serial", f"{cert.serial_number:x}", now, args.reason)
        elif args.serial:
            made = entry("serial", args.serial, now, args.reason)
        else:
            made = entry("id", args.id, now, args.reason)
        listed = ca.revoke(made)
    except RevocationError as exc:
        raise UsageError(f"{ca.revocation_file()} cannot be read, fix it first: {exc}") from None
    except (ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    print(
        f"revoked: {made.line()} ({plural(len(listed.entries), 'entry', 'entries')} in "
        f"{ca.revocation_file()}; serve refuses it within a second)"
    )
    return 0


def rollover(args: argparse.Namespace) -> int:
    from meshward.istio.certs import ISSUED_DIR, CertError

    ca = _ca(args)
    try:
        if args.step == "start":
            ca.rollover_start()
            print(
                f"a new CA is trusted beside the current one ({ca.cert}: "
                f"{plural(len(ca.bundle()), 'certificate')}); once serve and every Envoy read "
                "it (at once from files, within a minute or two from a Secret): "
                "`meshward ca rollover switch`"
            )
        elif args.step == "switch":
            ca.rollover_switch()
            done, failed = _reissue_all(ca, [ca.dir / ISSUED_DIR], everything=True)
            for line in failed:
                print(f"meshward ca rollover: skipped {line}", file=sys.stderr)
            print(
                f"the new CA issues now (serve renews its own certificate); reissued "
                f"{plural(done, 'certificate')} in {ca.dir / ISSUED_DIR} (others: `meshward ca "
                "renew --all --cert-dir DIR`); then `meshward ca rollover finish`"
            )
        else:
            dropped = ca.rollover_finish()
            print(f"dropped {plural(dropped, 'old CA')}: what they issued is refused from now on")
    except (CertError, OSError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def status(args: argparse.Namespace) -> int:
    from cryptography import x509

    from meshward.core.revocation import RevocationError, parse
    from meshward.istio.certs import ISSUED_DIR, NEXT_KEY

    ca = _ca(args)
    bundle = [x509.load_pem_x509_certificate(c) for c in ca.bundle()]
    for n, c in enumerate(bundle, 1):
        role = "issuing" if n == 1 else "trusted"
        print(f"CA {n} ({role}): serial {c.serial_number:x}, until {c.not_valid_after_utc:%F}")
    if (ca.dir / NEXT_KEY).exists():
        print("rollover: started (next: `meshward ca rollover switch`)")
    for path in sorted((ca.dir / ISSUED_DIR).glob("*.crt")):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            continue
        by = [n for n, ca_cert in enumerate(bundle, 1) if _issued_by(cert, ca_cert)]
        print(
            f"{path.name}: serial {cert.serial_number:x}, until "
            f"{cert.not_valid_after_utc:%F %H:%M}, "
            + (f"from CA {by[0]}" if by else "from NO trusted CA")
        )
    try:
        listed = parse(ca.revocation_file().read_bytes())
        print(f"revocations: {len(listed.entries)}")
    except FileNotFoundError:
        print("revocations: 0")
    except (OSError, RevocationError) as exc:
        print(f"revocations: UNREADABLE ({exc}): serve refuses every call", file=sys.stderr)
        return 1
    return 0


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
