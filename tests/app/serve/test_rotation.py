"""Rotation and revocation on serve's mTLS gRPC ports, over real gRPC (issue 11): serve renews
its own certificate and follows a CA rollover without a restart, an open stream survives it,
a revoked certificate is refused (fail closed on an unreadable list) while a fresh one for the
same identity passes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc

from meshward.app.serve import Server
from meshward.core.observation import Observation
from meshward.core.revocation import RevocationError, entry
from meshward.istio.certs import MeshCA
from meshward.istio.tls import SidecarTLS
from meshward.runtime.grpcpeer import PeerPolicy
from tests.support.grpcmtls import aio_channel, server_certificate
from tests.support.serve import check_request, running_server, tap_messages

pytestmark = pytest.mark.usefixtures("openssl")

SHOP_API = "spiffe://cluster.local/ns/shop/sa/api"


def _server(ca: MeshCA) -> contextlib.AbstractAsyncContextManager[Server]:
    return running_server(peers=PeerPolicy(), grpc_ca_dir=str(ca.dir))


async def _until(what: Callable[[], object], seconds: float = 8.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.1)


async def _check_code(port: int, tls: SidecarTLS, path: str = "/items") -> grpc.StatusCode:
    """A Check on a new connection: OK, or the refusal's code (UNAVAILABLE: no handshake)."""
    async with aio_channel(port, tls) as ch:
        return await _check_on(ch, path)


async def _check_on(ch: grpc.aio.Channel, path: str = "/items") -> grpc.StatusCode:
    try:
        await external_auth_pb2_grpc.AuthorizationStub(ch).Check(
            check_request("GET", path), timeout=5
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _errors(srv: Server, kind: str) -> float:
    for line in srv.metrics.exposition().decode().splitlines():
        if line.startswith(f'meshward_errors_total{{kind="{kind}",where="extauthz"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _presented(port: int, tls: SidecarTLS) -> x509.Certificate:
    return await asyncio.to_thread(server_certificate, port, tls)


def test_renewal_keeps_an_open_stream_and_new_connections_get_the_new_certificate(
    tmp_path: Path,
) -> None:
    ca = MeshCA(tmp_path / "ca")
    api = ca.issue("shop", "api", out=tmp_path / "issued")
    seen: list[Observation] = []

    async def main() -> None:
        async with _server(ca) as srv:
            assert srv.tls is not None
            srv.tap.sink = seen.append
            port = srv.ports["tap"]
            before = await _presented(port, api)
            assert before.serial_number == srv.tls.current.serial
            # one day, renewed after two thirds of it
            life = before.not_valid_after_utc - before.not_valid_before_utc
            assert life.days == 1
            messages = tap_messages("GET", "/items", request_id="long")
            gate = asyncio.Event()

            async def slow() -> AsyncIterator[object]:
                yield messages[0]
                await gate.wait()
                for m in messages[1:]:
                    yield m

            async with aio_channel(port, api) as ch:
                stub = external_processor_pb2_grpc.ExternalProcessorStub(ch)
                call = stub.Process(slow())
                await call.wait_for_connection()
                # renewal due now: serve's watcher issues a new certificate within a second
                srv.tls.current = dataclasses.replace(srv.tls.current, renew_at=0.0)
                await _until(lambda: srv.tls.current.generation == 2)  # type: ignore[union-attr]
                after = await _presented(port, api)
                assert after.serial_number == srv.tls.current.serial != before.serial_number
                gate.set()  # the stream opened before the renewal goes on, on its connection
                async for _ in call:
                    pass
                assert await call.code() == grpc.StatusCode.OK
                # and the old connection takes new streams
                again = stub.Process(iter(tap_messages("GET", "/items", request_id="again")))
                async for _ in again:
                    pass
            # both taps' ports got it: the authz port too presents the new certificate
            authz = await _presented(srv.ports["authz"], api)
            assert authz.serial_number == after.serial_number

    asyncio.run(main())
    assert [o.request_id for o in seen] == ["long", "again"]


def test_ca_rollover_with_both_trusted_then_the_old_one_dropped(tmp_path: Path) -> None:
    ca = MeshCA(tmp_path / "ca")
    old = ca.issue("shop", "api", out=tmp_path / "old")
    first_ca = x509.load_pem_x509_certificate(ca.bundle()[0])

    async def main() -> None:
        async with _server(ca) as srv:
            assert srv.tls is not None
            port = srv.ports["authz"]
            assert await _check_code(port, old) == grpc.StatusCode.OK
            # 1. a new CA trusted beside the old one: serve reloads the bundle, no restart
            ca.rollover_start()
            await _until(lambda: srv.tls.current.generation == 2)  # type: ignore[union-attr]
            assert await _check_code(port, old) == grpc.StatusCode.OK
            # 2. the new CA issues: serve reissues its own from it; workloads reissued
            ca.rollover_switch()
            await _until(lambda: srv.tls.current.generation == 3)  # type: ignore[union-attr]
            new = ca.issue("shop", "api", out=tmp_path / "new")
            new_ca = x509.load_pem_x509_certificate(ca.bundle()[0])
            assert new_ca.serial_number != first_ca.serial_number
            served = await _presented(port, new)
            served.verify_directly_issued_by(new_ca)
            assert await _check_code(port, new) == grpc.StatusCode.OK
            assert await _check_code(port, old) == grpc.StatusCode.OK  # both trusted still
            # 3. the old CA dropped: its certificates no longer get a handshake
            assert ca.rollover_finish() == 1
            await _until(lambda: srv.tls.current.generation == 4)  # type: ignore[union-attr]
            assert await _check_code(port, new) == grpc.StatusCode.OK
            assert await _check_code(port, old) == grpc.StatusCode.UNAVAILABLE

    asyncio.run(main())


def test_a_revoked_certificate_is_refused_and_a_fresh_one_passes(tmp_path: Path) -> None:
    ca = MeshCA(tmp_path / "ca")
    leaked = ca.issue("shop", "api", out=tmp_path / "leaked")
    serial = x509.load_pem_x509_certificate(Path(leaked.cert_chain).read_bytes()).serial_number

    async def main() -> None:
        async with _server(ca) as srv, aio_channel(srv.ports["authz"], leaked) as open_ch:
            port = srv.ports["authz"]
            assert await _check_on(open_ch) == grpc.StatusCode.OK
            ca.revoke(entry("serial", f"{serial:x}", datetime.now(UTC), "leaked"))
            # refused within a second, on the connection opened before the revocation too
            deadline = time.monotonic() + 5
            while await _check_on(open_ch, "/poll") != grpc.StatusCode.PERMISSION_DENIED:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            profile = srv.engine.allowlist.get("shop/api")
            assert profile is not None
            known = profile.endpoints
            for path in ("/new-a", "/new-b"):
                assert await _check_code(port, leaked, path) == grpc.StatusCode.PERMISSION_DENIED
            assert _errors(srv, "peer-revoked") >= 3
            assert profile.endpoints == known  # a revoked peer teaches nothing
            # a fresh certificate for the same identity passes
            fresh = ca.issue("shop", "api", out=tmp_path / "fresh")
            assert await _check_code(port, fresh) == grpc.StatusCode.OK
            # revoking the identity: every certificate of it issued until now, then a new one
            ca.revoke(entry("id", SHOP_API, datetime.now(UTC)))
            await _until(lambda: srv.peers.revocations.list.ids)  # type: ignore[union-attr]
            assert await _check_code(port, fresh) == grpc.StatusCode.PERMISSION_DENIED
            await asyncio.sleep(1.05 - datetime.now(UTC).microsecond / 1e6)  # next second
            after = ca.issue("shop", "api", out=tmp_path / "after")
            assert await _check_code(port, after) == grpc.StatusCode.OK
            web = ca.issue("shop", "web", out=tmp_path / "web")  # other identities: unaffected
            assert await _check_code(port, web) == grpc.StatusCode.OK

    asyncio.run(main())


def test_an_unreadable_list_refuses_every_call_until_it_is_fixed(tmp_path: Path) -> None:
    ca = MeshCA(tmp_path / "ca")
    api = ca.issue("shop", "api", out=tmp_path / "issued")
    listed = ca.revocation_file()

    async def main() -> None:
        async with _server(ca) as srv:
            port = srv.ports["authz"]
            assert await _check_code(port, api) == grpc.StatusCode.OK
            listed.write_bytes(b"serial 12 2026-12-06T10:00:00Z\nhalf a line")
            await _until(lambda: srv.peers.revocations.broken)  # type: ignore[union-attr]
            assert await _check_code(port, api) == grpc.StatusCode.PERMISSION_DENIED
            assert _errors(srv, "peer-revocation-list-unreadable") == 1
            listed.write_bytes(b"serial 12 2026-12-06T10:00:00Z\n")
            await _until(lambda: not srv.peers.revocations.broken)  # type: ignore[union-attr]
            assert await _check_code(port, api) == grpc.StatusCode.OK

    asyncio.run(main())
    # at start, the same list stops serve with the file and the line
    listed.write_bytes(b"serial 12 2026-12-06T10:00:00Z\nhalf a line")

    async def start() -> None:
        async with _server(ca):
            pass

    with pytest.raises(RevocationError, match=r"/ca/revoked: line 2: time 'line' is not"):
        asyncio.run(start())


def test_replicas_sharing_one_ca_follow_one_revocation_and_rollover(tmp_path: Path) -> None:
    """Two serve replicas on one CA directory (one lock): a revocation reaches both, and a
    rollover's new CA is trusted by both."""
    ca = MeshCA(tmp_path / "ca")
    api = ca.issue("shop", "api", out=tmp_path / "api")
    serial = x509.load_pem_x509_certificate(Path(api.cert_chain).read_bytes()).serial_number

    async def main() -> None:
        async with _server(ca) as one, _server(ca) as two:
            replicas = (one, two)
            for srv in replicas:
                assert await _check_code(srv.ports["authz"], api) == grpc.StatusCode.OK
            ca.revoke(entry("serial", f"{serial:x}", datetime.now(UTC)))
            for srv in replicas:
                await _until(lambda s=srv: s.peers.revocations.list)  # type: ignore[misc]
                assert await _check_code(srv.ports["authz"], api) == (
                    grpc.StatusCode.PERMISSION_DENIED
                )
            ca.rollover_start()
            ca.rollover_switch()
            fresh = ca.issue("shop", "api", out=tmp_path / "fresh")  # from the new CA
            for srv in replicas:
                await _until(lambda s=srv: s.tls.current.generation >= 2)  # type: ignore[misc]
                assert await _check_code(srv.ports["authz"], fresh) == grpc.StatusCode.OK

    asyncio.run(main())


def test_meshward_serve_with_a_bad_list_says_which_line(tmp_path: Path) -> None:
    ca = MeshCA(tmp_path / "ca")
    ca.revocation_file().write_bytes(b"serial 12 2026-12-06T10:00:00Z\nid spiffe://x 2026\n")
    ports = ("--authz-port", "0", "--tap-port", "0", "--http-port", "0")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshward",
            "serve",
            "--db",
            str(tmp_path / "m.db"),
            *ports,
            "--listen-host",
            "127.0.0.1",
            "--grpc-ca-dir",
            str(ca.dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"meshward serve: cannot serve: {ca.dir}/revoked: line 2: time '2026'" in done.stderr
