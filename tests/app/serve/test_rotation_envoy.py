"""Rotation and revocation through a real Envoy sidecar rendered by `meshward envoy bootstrap`
(issue 11): `meshward ca issue` reissues the sidecar's certificate and Envoy takes it from its
file-based SDS without a restart; after serve recycles the connection the sidecar calls with the
new one, so revoking the old serial leaves its traffic flowing; a CA rollover end to end."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshward.app import cli, grpctls
from meshward.istio.envoyproc import EnvoyProcess
from meshward.runtime.grpcpeer import PeerPolicy
from tests.support.envoy_http import ServerThread, http

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("openssl")]


def _meshward(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out


def _serials(envoy: EnvoyProcess) -> set[str]:
    """The serial numbers of the client certificates Envoy holds now (its admin /certs)."""
    certs = json.loads(envoy.admin_get("/certs"))["certificates"]
    return {c["serial_number"] for entry in certs for c in entry.get("cert_chain", [])}


def _until(what: Callable[[], object], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)


@pytest.fixture
def sidecar(
    envoy_bin: str,
    echo_app: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[ServerThread, EnvoyProcess, str]]:
    """serve (mTLS, its CA in tmp_path/ca; connections recycled every 2 s instead of 10 min)
    and an enforce-mode sidecar of shop/api from `meshward envoy bootstrap`."""
    monkeypatch.setattr(grpctls, "MAX_CONNECTION_AGE_S", 2.0)
    monkeypatch.setattr(grpctls, "CONNECTION_AGE_GRACE_S", 1.0)
    ca_dir = str(tmp_path / "ca")
    with ServerThread(str(tmp_path / "m.db"), peers=PeerPolicy(), grpc_ca_dir=ca_dir) as srv:
        boot = _meshward(
            capsys,
            *("envoy", "bootstrap", "--listen", "0", "--upstream", f"127.0.0.1:{echo_app}"),
            *("--namespace", "shop", "--workload", "api", "--mode", "enforce"),
            *("--authz-port", str(srv.ports["authz"]), "--tap-port", str(srv.ports["tap"])),
            *("--ca-dir", ca_dir, "--format", "json"),
        )
        with EnvoyProcess(json.loads(boot), envoy=envoy_bin, name="rotating-sidecar") as envoy:
            yield srv, envoy, ca_dir


def _revoked_calls(text: str) -> float:
    for line in text.splitlines():
        if line.startswith('meshward_errors_total{kind="peer-revoked",where="extauthz"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reissued_certificate_reaches_envoy_and_the_old_one_can_be_revoked(
    sidecar: tuple[ServerThread, EnvoyProcess, str], capsys: pytest.CaptureFixture[str]
) -> None:
    srv, envoy, ca_dir = sidecar
    assert http(envoy.port, "/items/1")[0] == 200  # learn: Check allows over mTLS
    (old,) = _serials(envoy)
    pid = envoy.proc.pid  # type: ignore[union-attr]
    _meshward(capsys, "ca", "issue", "--namespace", "shop", "--service-account", "api",
              "--ca-dir", ca_dir)  # fmt: skip
    _until(lambda: _serials(envoy) - {old})
    (new,) = _serials(envoy)
    assert new != old and envoy.proc.pid == pid  # type: ignore[union-attr]
    # the leaked one revoked: after serve recycles the connection, Envoy's calls carry the new
    # certificate and pass; a 403 meanwhile is a Check refused on the old connection
    _meshward(capsys, "ca", "revoke", "--serial", old, "--ca-dir", ca_dir)
    time.sleep(2 * grpctls.WATCH_SECONDS)
    _until(lambda: http(envoy.port, "/items/1")[0] == 200)  # within one connection age
    assert srv.server is not None
    refused = _revoked_calls(srv.server.metrics.exposition().decode())
    assert [http(envoy.port, f"/items/{i}")[0] for i in range(5)] == [200] * 5
    # the sidecar's calls now carry the new certificate: none of them was refused as revoked
    assert _revoked_calls(srv.server.metrics.exposition().decode()) == refused


def test_ca_rollover_through_envoy(
    sidecar: tuple[ServerThread, EnvoyProcess, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, envoy, ca_dir = sidecar
    assert http(envoy.port, "/a")[0] == 200
    (old,) = _serials(envoy)
    for step in ("start", "switch"):
        _meshward(capsys, "ca", "rollover", step, "--ca-dir", ca_dir)
        assert http(envoy.port, "/a")[0] == 200
    _until(lambda: _serials(envoy) - {old})  # `switch` reissued CA-DIR/issued: Envoy has it
    _meshward(capsys, "ca", "rollover", "finish", "--ca-dir", ca_dir)
    time.sleep(2 * grpctls.WATCH_SECONDS + grpctls.MAX_CONNECTION_AGE_S + 1)
    _until(lambda: http(envoy.port, "/b")[0] == 200)
    # only the new CA is trusted on both ends now, and the sidecar's traffic still flows
    assert [http(envoy.port, f"/b/{i}")[0] for i in range(5)] == [200] * 5
    status = _meshward(capsys, "ca", "status", "--ca-dir", ca_dir)
    assert "CA 2" not in status and "shop.api.crt" in status and "from CA 1" in status


def test_no_request_is_dropped_while_everything_rotates(
    sidecar: tuple[ServerThread, EnvoyProcess, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Requests back to back through the enforce-mode sidecar while serve renews its own
    certificate, the sidecar's is reissued and serve recycles the connection every 2 s: every
    one is answered 200 (a Check lost to a GOAWAY or a handshake would be a 403)."""
    srv, envoy, ca_dir = sidecar
    assert srv.server is not None and srv.server.tls is not None
    tls = srv.server.tls
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            statuses.append(http(envoy.port, "/items/1")[0])

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        time.sleep(1)
        tls.current = dataclasses.replace(tls.current, renew_at=0.0)
        _until(lambda: tls.current.generation == 2)
        _meshward(capsys, "ca", "issue", "--namespace", "shop", "--service-account", "api",
                  "--ca-dir", ca_dir)  # fmt: skip
        time.sleep(2 * grpctls.MAX_CONNECTION_AGE_S + 1)
    finally:
        stop.set()
        sender.join(10)
    assert len(statuses) > 20
    assert set(statuses) == {200}, f"{len(statuses) - statuses.count(200)} not 200"
