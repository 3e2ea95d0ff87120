"""The controller's audit webhook port: HTTPS only, never an anonymous Event (a bearer token or a
client certificate), 503 on a replica that does not lead, and bad batches a clear 4xx or a
counted skip, never a crash. (The API server posting to it: tests/app/test_meshguard_audit.py.)"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshward.app.kubeauditport import MAX_BODY, PATH, AuditConfigError, AuditPort
from meshward.app.meshguard import MeshGuard
from meshward.core.kubeaudit import Authors
from meshward.istio.certs import MeshCA
from meshward.istio.tls import SidecarTLS
from tests.support.kubeaudit import fresh_event as audit_event

pytestmark = pytest.mark.integration


@dataclass
class Certs:
    server: SidecarTLS
    client: SidecarTLS  # signed by the same CA: what the API server's kubeconfig presents
    token_file: Path
    token: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    work = tmp_path_factory.mktemp("auditport")
    ca = MeshCA(work / "ca")
    server = ca.issue("meshward", "meshward-controller", out=work, ips=["127.0.0.1"])
    client = ca.issue("kube-system", "kube-apiserver", out=work / "client")
    token = secrets.token_urlsafe(32)
    (work / "token").write_text(token + "\n")
    return Certs(server, client, work / "token", token)


def guard() -> MeshGuard:
    return MeshGuard(None, authors=Authors())


@pytest.fixture
def port(certs: Certs) -> Iterator[AuditPort]:
    p = AuditPort(
        guard(),
        cert=certs.server.cert_chain,
        key=certs.server.private_key,
        token_file=str(certs.token_file),
        host="127.0.0.1",
    )
    p.start()
    try:
        yield p
    finally:
        p.stop()


def post(
    p: AuditPort,
    certs: Certs,
    body: bytes,
    token: str | None = None,
    client: SidecarTLS | None = None,
) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=certs.server.ca_cert)
    if client is not None:
        ctx.load_cert_chain(client.cert_chain, client.private_key)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"https://127.0.0.1:{p.port}{PATH}", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def event_list(*items: Any) -> bytes:
    return json.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": list(items)}
    ).encode()


def test_only_the_token_holder_may_post(port: AuditPort, certs: Certs) -> None:
    assert post(port, certs, event_list(audit_event()))[0] == 401
    assert post(port, certs, event_list(audit_event()), token="x" * 43)[0] == 401
    assert post(port, certs, event_list(audit_event()), token=certs.token) == (
        200,
        {"kept": 1, "skipped": 0},
    )
    counts = port.guard.counters.audit
    assert counts["refused-unauthenticated"] == 2 and counts["kept"] == 1
    # plaintext HTTP on the port gets nothing
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port.port}{PATH}", data=b"[]", timeout=5)


def test_bad_batches_are_refused_or_counted_never_a_crash(port: AuditPort, certs: Certs) -> None:
    def send(body: bytes) -> int:
        return post(port, certs, body, token=certs.token)[0]

    assert send(b"{not json") == 400
    assert send(b'{"kind": "List", "items": []}') == 400
    assert send(b"[" * 100_000) == 400  # nested too deeply
    assert send(b"x" * (MAX_BODY + 1)) == 413
    junk = event_list(
        None,
        "x",
        {"verb": "get"},
        audit_event(stage="RequestReceived"),
        audit_event(responseStatus={"code": 409}),
        {**audit_event(), "unknownField": {"deep": [1, 2]}},  # unknown fields are ignored
    )
    assert post(port, certs, junk, token=certs.token) == (200, {"kept": 1, "skipped": 5})
    counts = port.guard.counters.audit
    assert counts["refused-bad-body"] == 3 and counts["refused-too-large"] == 1
    assert counts["skipped-malformed"] == 2 and counts["skipped-not-a-write"] == 1
    assert counts["skipped-stage"] == 1 and counts["skipped-failed"] == 1
    assert len(port.guard.authors or ()) == 1
    # still serving
    assert post(port, certs, event_list(), token=certs.token) == (200, {"kept": 0, "skipped": 0})


def test_a_replica_that_does_not_lead_answers_503(certs: Certs) -> None:
    leading = threading.Event()
    p = AuditPort(
        guard(),
        cert=certs.server.cert_chain,
        key=certs.server.private_key,
        token_file=str(certs.token_file),
        leading=leading,
        host="127.0.0.1",
    )
    p.start()
    try:
        status, headers = post(p, certs, event_list(audit_event()), token=certs.token)
        assert status == 503 and headers["Retry-After"] == "1"
        leading.set()
        assert post(p, certs, event_list(audit_event()), token=certs.token)[0] == 200
    finally:
        p.stop()


def test_a_client_certificate_alone_is_a_credential(certs: Certs) -> None:
    p = AuditPort(
        guard(),
        cert=certs.server.cert_chain,
        key=certs.server.private_key,
        client_ca=certs.server.ca_cert,
        host="127.0.0.1",
    )
    p.start()
    try:
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            post(p, certs, event_list(audit_event()))  # no certificate: TLS refuses
        status, answer = post(p, certs, event_list(audit_event()), client=certs.client)
        assert (status, answer) == (200, {"kept": 1, "skipped": 0})
    finally:
        p.stop()


def test_it_never_starts_open(certs: Certs, tmp_path: Path) -> None:
    tls = {"cert": certs.server.cert_chain, "key": certs.server.private_key}
    with pytest.raises(AuditConfigError, match="needs a credential"):
        AuditPort(guard(), **tls)
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(AuditConfigError, match="16"):
        AuditPort(guard(), token_file=str(short), **tls)
    with pytest.raises(AuditConfigError, match="no audit records"):
        AuditPort(MeshGuard(None), token_file=str(certs.token_file), **tls)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--audit-webhook-port", "9195"], "--audit-webhook-cert"),
        (["--audit-webhook-port", "9195", "--no-guard"], "needs the guard"),
        (["--audit-webhook-port", "70000"], "0..65535"),
        (["--audit-wait", "0"], "--audit-wait"),
    ],
)
def test_controller_flags_are_checked_before_anything_starts(
    argv: list[str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from meshward.app.commands import UsageError
    from meshward.app.commands import controller as command
    from meshward.runtime import jsonlog

    monkeypatch.setattr(jsonlog, "setup", lambda level: None)  # pytest keeps its log handlers

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["controller", "--kubeconfig", "/nonexistent", *argv])
    with pytest.raises(UsageError, match=says):
        command.run(args)
