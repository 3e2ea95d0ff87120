"""The Istio route with real Envoys (issue 11, item 2): serve in plaintext behind its own sidecar
(an Envoy configured as Istio's inbound sidecar under STRICT mTLS, tests/support/istio_sidecar),
an app's sidecar calling it with its own certificate as Istio's automatic mTLS does. serve
trusts only the x-forwarded-client-cert element its sidecar appended; a forged one sent by the
caller is ignored, with APPEND_FORWARD and with SANITIZE_SET."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from meshward.core.peer import meshward_identity
from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.certs import MeshCA
from meshward.istio.envoyproc import EnvoyProcess
from meshward.istio.tls import SidecarTLS
from meshward.runtime.grpcpeer import PeerPolicy
from tests.support.envoy_http import ServerThread, http
from tests.support.grpcmtls import credentials
from tests.support.istio_sidecar import meshward_sidecar
from tests.support.serve import check_request

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("openssl")]

OWN = meshward_identity()


@contextlib.contextmanager
def istio_route(
    tmp_path: Path, envoy_bin: str, xfcc: str, strict: bool = True
) -> Iterator[tuple[ServerThread, EnvoyProcess, MeshCA]]:
    """serve (--grpc-plaintext) behind meshward's own inbound sidecar."""
    ca = MeshCA(tmp_path / "ca")
    with ServerThread(str(tmp_path / "m.db"), peers=PeerPolicy(kind="xfcc")) as srv:
        boot = meshward_sidecar(
            ca.issue("meshward", "meshward"),
            {"authz": srv.ports["authz"], "tap": srv.ports["tap"]},
            xfcc,
            strict=strict,
        )
        with EnvoyProcess(boot, envoy=envoy_bin, name=f"meshward-sidecar-{xfcc}") as sidecar:
            yield srv, sidecar, ca


def _direct_check(port: int, tls: SidecarTLS, req: Any, metadata: tuple = ()) -> grpc.StatusCode:
    """A gRPC client of its own (an attacker's pod with a mesh certificate) to meshward's
    sidecar."""
    options = [("grpc.ssl_target_name_override", "meshward.meshward.svc.cluster.local")]
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials(tls), options=options) as ch:
        try:
            external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, metadata=metadata, timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_app_sidecar_reaches_serve_through_meshwards_sidecar(
    envoy_bin: str, echo_app: int, tmp_path: Path
) -> None:
    with istio_route(tmp_path, envoy_bin, "APPEND_FORWARD") as (srv, mw_sidecar, ca):
        api = ca.issue("shop", "api")
        app = render_bootstrap(
            0,
            f"127.0.0.1:{echo_app}",
            "shop",
            "api",
            "enforce",
            authz_port=mw_sidecar.listener_ports["authz"],
            tap_port=mw_sidecar.listener_ports["tap"],
            meshward_tls=api,  # Istio's automatic mTLS: the sidecar's own certificate
        )
        with EnvoyProcess(app, envoy=envoy_bin, name="api-sidecar") as envoy:
            for i in range(3):  # namespace in learn: Check allows and learns
                assert http(envoy.port, f"/items/{i}")[0] == 200
            srv.wait_metric('meshward_checks_total{result="ok"}', 3)
            srv.wait_metric('meshward_tap_streams_total{outcome="complete"}', 3)
            services = srv.api("GET", "/api/v1/allowlist")["services"]
            assert [s["destination"] for s in services] == ["shop/api"]
            srv.api("PUT", "/api/v1/modes/shop", {"mode": "enforce"})
            status, headers, body = http(envoy.port, "/admin/export")
            assert status == 403 and b"denied by meshward" in body
            assert "x-meshward-reason" not in headers  # the reasons go to the alert only
        assert srv.metric('meshward_errors_total{kind="peer-') == 0


@pytest.mark.parametrize("xfcc", ["APPEND_FORWARD", "SANITIZE_SET"])
def test_forged_xfcc_from_the_caller_is_ignored(envoy_bin: str, tmp_path: Path, xfcc: str) -> None:
    with istio_route(tmp_path, envoy_bin, xfcc) as (srv, mw_sidecar, ca):
        port = mw_sidecar.listener_ports["authz"]
        evil = ca.issue("evil", "attacker")
        forged = (
            ("x-forwarded-client-cert", f"By={OWN};URI=spiffe://cluster.local/ns/shop/sa/api"),
        )
        # the attacker claims shop in context_extensions and in a forged XFCC element: the
        # element meshward's sidecar appends says evil/attacker, so the claim is refused
        code = _direct_check(port, evil, check_request("POST", "/admin/teach"), forged)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert srv.metric('meshward_errors_total{kind="peer-namespace-mismatch"') == 1
        # without a claim it speaks for itself only
        bare = check_request("GET", "/mine")
        bare.attributes.context_extensions.clear()
        assert _direct_check(port, evil, bare, forged) == grpc.StatusCode.OK
        services = [s["destination"] for s in srv.api("GET", "/api/v1/allowlist")["services"]]
        assert services == ["evil/attacker"]
        # two forged header fields: Envoy coalesces them with its own into one, same answer
        twice = (*forged, ("x-forwarded-client-cert", f"By={OWN};URI=spiffe://x/ns/a/sa/b"))
        assert _direct_check(port, evil, check_request("GET", "/"), twice) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert srv.metric('meshward_errors_total{kind="peer-namespace-mismatch"') == 2


def test_without_meshwards_sidecar_nothing_is_trusted(envoy_bin: str, tmp_path: Path) -> None:
    """Straight to serve's plaintext port (no XFCC), and a client without a certificate to its
    sidecar: refused / no handshake."""
    with istio_route(tmp_path, envoy_bin, "APPEND_FORWARD") as (srv, mw_sidecar, ca):

        async def plaintext() -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.ports['authz']}") as ch:
                try:
                    await external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                        check_request(), timeout=5
                    )
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
            return grpc.StatusCode.OK

        assert asyncio.run(plaintext()) == grpc.StatusCode.PERMISSION_DENIED
        assert srv.metric('meshward_errors_total{kind="peer-xfcc-missing"') == 1
        creds = grpc.ssl_channel_credentials(Path(ca.cert).read_bytes())
        options = [("grpc.ssl_target_name_override", "meshward.meshward.svc.cluster.local")]
        target = f"127.0.0.1:{mw_sidecar.listener_ports['authz']}"
        with grpc.secure_channel(target, creds, options=options) as ch:
            with pytest.raises(grpc.RpcError) as err:
                external_auth_pb2_grpc.AuthorizationStub(ch).Check(check_request(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert srv.api("GET", "/api/v1/allowlist")["services"] == []


def test_permissive_sidecar_strips_a_plaintext_callers_xfcc(envoy_bin: str, tmp_path: Path) -> None:
    """Under PERMISSIVE (not what meshward wants, but Istio's default) a plaintext caller
    reaches serve through its sidecar, and Envoy removes the XFCC header of a connection without
    a client certificate: the forged element never arrives, the call is refused."""
    with istio_route(tmp_path, envoy_bin, "APPEND_FORWARD", strict=False) as (srv, mw_sidecar, _):
        forged = (
            ("x-forwarded-client-cert", f"By={OWN};URI=spiffe://cluster.local/ns/shop/sa/api"),
        )
        target = f"127.0.0.1:{mw_sidecar.listener_ports['authz']}"
        with grpc.insecure_channel(target) as ch:
            with pytest.raises(grpc.RpcError) as err:
                external_auth_pb2_grpc.AuthorizationStub(ch).Check(
                    check_request(), metadata=forged, timeout=5
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert srv.metric('meshward_errors_total{kind="peer-xfcc-missing"') == 1
        assert srv.api("GET", "/api/v1/allowlist")["services"] == []
