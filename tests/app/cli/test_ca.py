"""`meshward ca`: issue, renew, revoke, roll over, status; bad input gets one clear line and
exit 2, and nothing on disk changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from meshward.core.revocation import parse
from tests.support.cli import invoke

pytestmark = pytest.mark.usefixtures("openssl")


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_issue_renew_revoke_and_status(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = ["--ca-dir", str(tmp_path / "ca")]
    assert (
        invoke(capsys, "ca", "issue", "--namespace", "shop", "--service-account", "api", *ca).code
        == 0
    )
    cert = tmp_path / "ca" / "issued" / "shop.api.crt"
    first = _serial(cert)
    life = x509.load_pem_x509_certificate(cert.read_bytes())
    assert (life.not_valid_after_utc - life.not_valid_before_utc).days == 7
    assert (cert.with_suffix(".key").stat().st_mode & 0o077) == 0
    # nothing is due yet; --all reissues with the same identity and lifetime
    assert invoke(capsys, "ca", "renew", *ca).out == "renewed 0 certificates\n"
    assert invoke(capsys, "ca", "renew", "--all", *ca).out == "renewed 1 certificate\n"
    assert _serial(cert) != first
    code, out, _ = invoke(
        capsys, "ca", "revoke", "--serial", f"{first:X}", "--reason", "leaked", *ca
    )
    assert code == 0 and f"serial {first:x}" in out
    code, out, _ = invoke(capsys, "ca", "revoke", "--cert", str(cert), *ca)
    assert code == 0 and "2 entries" in out
    listed = parse((tmp_path / "ca" / "revoked").read_bytes())
    assert listed.serials == {first, _serial(cert)}
    code, out, _ = invoke(capsys, "ca", "status", *ca)
    assert code == 0 and "CA 1 (issuing)" in out and "from CA 1" in out
    assert "revocations: 2" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("revoke", "--serial", "xyz"), "not 1-40 hex digits"),
        (("revoke", "--id", "spiffe://cluster.local/ns/Shop/sa/x"), "not a SPIFFE id"),
        (("revoke", "--serial", "1", "--reason", "x" * 300), "at most 200"),
        (("issue", "--namespace", "Shop", "--service-account", "a"), "Kubernetes names"),
        (("issue", "--namespace", "s", "--service-account", "a", "--days", "0"), "1..3650"),
        (("rollover", "switch"), "no rollover under way"),
        (("renew", "--every", "0"), "1..86400"),
    ],
)
def test_bad_input_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: tuple[str, ...], says: str
) -> None:
    ca = ["--ca-dir", str(tmp_path / "ca")]
    assert (
        invoke(capsys, "ca", "issue", "--namespace", "shop", "--service-account", "api", *ca).code
        == 0
    )
    before = {p: p.read_bytes() for p in (tmp_path / "ca").rglob("*") if p.is_file()}
    code, out, err = invoke(capsys, "ca", *argv, *ca)
    assert code == 2 and out == "" and says in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in (tmp_path / "ca").rglob("*") if p.is_file()} == before


def test_a_broken_list_is_never_overwritten(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ca = ["--ca-dir", str(tmp_path / "ca")]
    assert (
        invoke(capsys, "ca", "issue", "--namespace", "shop", "--service-account", "api", *ca).code
        == 0
    )
    listed = tmp_path / "ca" / "revoked"
    listed.write_bytes(b"serial 1f 2026-12-06T10:00:00Z\nserial\n")
    code, _, err = invoke(capsys, "ca", "revoke", "--serial", "2", *ca)
    assert code == 2 and "line 2" in err and "fix it first" in err
    assert listed.read_bytes() == b"serial 1f 2026-12-06T10:00:00Z\nserial\n"
    code, _, err = invoke(capsys, "ca", "status", *ca)
    assert code == 1 and "UNREADABLE" in err


def test_no_ca_no_renewal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = invoke(capsys, "ca", "renew", "--ca-dir", str(tmp_path / "none"))
    assert code == 2 and "no CA in" in err
    assert not (tmp_path / "none").exists()
