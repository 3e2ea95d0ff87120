"""serve's gRPC ports over real mTLS: whose traffic it is comes from the verified client
certificate only; peers without a valid identity, or claiming another namespace, are refused,
counted, logged and teach nothing (issue 11, item 2)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshward.app.serve import Server
from meshward.core.peer import parse_spiffe
from meshward.core.threats.inspection import NoDetector
from meshward.istio.certs import CertError, MeshCA
from meshward.istio.tls import SidecarTLS
from meshward.runtime.grpcpeer import PeerPolicy
from tests.support.grpcmtls import aio_channel, odd_certificate, server_only_channel
from tests.support.serve import check_request, running_server, tap_messages

pytestmark = pytest.mark.usefixtures("openssl")

SHOP_API = "spiffe://cluster.local/ns/shop/sa/api"
PKI = tuple[MeshCA, dict[str, SidecarTLS]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """serve's CA, sidecar certificates from it, odd ones, and one from another CA."""
    base = tmp_path_factory.mktemp("pki")
    ca = MeshCA(base / "ca")
    out = base / "issued"
    certs = {
        "api": ca.issue("shop", "api", out=out),
        "web": ca.issue("shop", "web", out=out),
        "no-san": odd_certificate(ca, out, "no-san", []),
        "dns-only": odd_certificate(ca, out, "dns-only", ["DNS:api.shop.svc.cluster.local"]),
        "two-uris": odd_certificate(
            ca, out, "two-uris", [f"URI:{SHOP_API}", "URI:spiffe://cluster.local/ns/pay/sa/api"]
        ),
        "not-spiffe": odd_certificate(ca, out, "not-spiffe", ["URI:https://shop/api"]),
        "foreign": odd_certificate(ca, out, "foreign", ["URI:spiffe://other.org/ns/shop/sa/api"]),
        "other-ca": MeshCA(base / "other").issue("shop", "api", out=base / "other-issued"),
    }
    return ca, certs


def _server(ca: MeshCA) -> contextlib.AbstractAsyncContextManager[Server]:
    return running_server(peers=PeerPolicy(), grpc_ca_dir=str(ca.dir))


async def _check(
    port: int, tls: SidecarTLS | None, req: external_auth_pb2.CheckRequest
) -> external_auth_pb2.CheckResponse:
    async with aio_channel(port, tls) as ch:
        return await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=5)


async def _tap(
    port: int, tls: SidecarTLS, metadata: tuple[tuple[str, str], ...], refused: bool = False
) -> None:
    """One tap stream. `refused`: send only the opening message and wait for the server's
    answer, so the client never writes after the server ended the call (grpc.aio reports such a
    write as its own INTERNAL "execute_batch" error, hiding the server's status)."""
    messages = tap_messages("GET", "/items", request_id="t1")

    async def opening_then_wait() -> AsyncIterator[object]:
        yield messages[0]
        await asyncio.Event().wait()  # cancelled when the call ends

    async with aio_channel(port, tls) as ch:
        stub = external_processor_pb2_grpc.ExternalProcessorStub(ch)
        requests = opening_then_wait() if refused else iter(messages)
        call = stub.Process(requests, metadata=metadata)
        async for _ in call:
            pass


def _errors(srv: Server, where: str, kind: str) -> float:
    for line in srv.metrics.exposition().decode().splitlines():
        if line.startswith(f'meshward_errors_total{{kind="{kind}",where="{where}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_check_destination_comes_from_the_certificate(pki: PKI) -> None:
    ca, certs = pki

    async def main() -> None:
        async with _server(ca) as srv:
            port = srv.ports["authz"]
            ok = await _check(port, certs["api"], check_request("GET", "/items"))
            assert ok.status.code == 0
            profile = srv.engine.allowlist.get("shop/api")
            assert profile is not None and profile.endpoints == 1
            # no hint at all: the workload is the service account
            bare = check_request("GET", "/orders")
            bare.attributes.context_extensions.clear()
            assert (await _check(port, certs["web"], bare)).status.code == 0
            assert srv.engine.allowlist.get("shop/web") is not None
            # a workload hint inside the verified namespace is a label there (no pod index)
            labelled = check_request("GET", "/x", namespace="shop", workload="cart")
            assert (await _check(port, certs["web"], labelled)).status.code == 0
            assert set(srv.engine.allowlist.services) == {"shop/api", "shop/web", "shop/cart"}

    asyncio.run(main())


def test_another_namespace_is_refused_and_teaches_nothing(pki: PKI) -> None:
    ca, certs = pki

    async def main() -> None:
        async with _server(ca) as srv:
            forged = check_request("POST", "/admin/dump", namespace="payments", workload="api")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _check(srv.ports["authz"], certs["web"], forged)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "namespace-mismatch" in (err.value.details() or "")
            # the same claim in the gRPC metadata instead of context_extensions
            forged.attributes.context_extensions.clear()
            async with aio_channel(srv.ports["authz"], certs["web"]) as ch:
                stub = external_auth_pb2_grpc.AuthorizationStub(ch)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.Check(
                        forged, metadata=(("x-meshward-namespace", "payments"),), timeout=5
                    )
            # and on the tap
            with pytest.raises(grpc.aio.AioRpcError) as tap_err:
                await _tap(
                    srv.ports["tap"], certs["web"], (("x-meshward-namespace", "payments"),), True
                )
            assert tap_err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert srv.engine.allowlist.services == {}
            assert _errors(srv, "extauthz", "peer-namespace-mismatch") == 2
            assert _errors(srv, "tap", "peer-namespace-mismatch") == 1
            text = srv.metrics.exposition().decode()
            assert 'meshward_checks_total{result="refused"} 2.0' in text
            assert 'meshward_tap_streams_total{outcome="refused"} 1.0' in text

    asyncio.run(main())


def test_tap_stream_is_bound_to_the_certificate(pki: PKI) -> None:
    ca, certs = pki
    seen = []

    async def main() -> None:
        async with _server(ca) as srv:
            srv.tap.sink = seen.append
            await _tap(srv.ports["tap"], certs["api"], (("x-meshward-workload", "api"),))
            await _tap(srv.ports["tap"], certs["web"], ())

    asyncio.run(main())
    assert [o.destination.key for o in seen] == ["shop/api", "shop/web"]
    assert seen[0].destination.principal == SHOP_API
    assert seen[0].source.principal == "spiffe://cluster.local/ns/shop/sa/web"  # the attribute


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("no-san", "peer-no-spiffe-id"),
        ("dns-only", "peer-no-spiffe-id"),
        ("two-uris", "peer-several-uri-sans"),
        ("not-spiffe", "peer-bad-spiffe-id"),
        ("foreign", "peer-foreign-trust-domain"),
    ],
)
def test_certificates_without_one_valid_identity_are_refused(
    pki: PKI, cert: str, reason: str
) -> None:
    ca, certs = pki

    async def main() -> None:
        async with _server(ca) as srv:
            for _ in range(2):  # the second from the cache of verified peers
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _check(srv.ports["authz"], certs[cert], check_request("GET", "/"))
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError):
                await _tap(srv.ports["tap"], certs[cert], (), refused=True)
            assert _errors(srv, "extauthz", reason) == 2
            assert _errors(srv, "tap", reason) == 1
            assert srv.engine.allowlist.services == {}

    asyncio.run(main())


def test_no_handshake_without_a_certificate_from_the_ca(pki: PKI) -> None:
    """Plaintext, TLS without a client certificate, a certificate of another CA: no call."""
    ca, certs = pki

    async def main() -> None:
        async with _server(ca) as srv:
            port = srv.ports["authz"]
            for channel in (
                aio_channel(port, None),
                server_only_channel(port, str(ca.cert)),
                aio_channel(port, certs["other-ca"]),
            ):
                async with channel as ch:
                    stub = external_auth_pb2_grpc.AuthorizationStub(ch)
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Check(check_request("GET", "/"), timeout=3)
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert srv.engine.allowlist.services == {}

    asyncio.run(main())


def test_ca_is_created_once_private_and_shared(tmp_path: Path) -> None:
    """First start creates the CA beside the store (key 0600); a second replica on the same
    directory loads the same CA; a key every user may read is refused."""

    async def main() -> None:
        db = str(tmp_path / "meshward.db")
        async with running_server(db=db, detector=NoDetector(), peers=PeerPolicy()):
            pass
        ca_dir = tmp_path / "meshward-ca"
        assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
        first = (ca_dir / "ca.crt").read_bytes()
        async with (
            running_server(db=db, detector=NoDetector(), peers=PeerPolicy()),
            running_server(
                db=str(tmp_path / "other.db"),
                detector=NoDetector(),
                peers=PeerPolicy(),
                grpc_ca_dir=str(ca_dir),
            ),
        ):
            pass
        assert (ca_dir / "ca.crt").read_bytes() == first
        os.chmod(ca_dir / "ca.key", 0o644)
        with pytest.raises(CertError, match="may be read by others"):
            async with running_server(db=db, detector=NoDetector(), peers=PeerPolicy()):
                pass

    asyncio.run(main())


uri_sans = st.one_of(
    st.builds(
        lambda ns, sa: f"spiffe://cluster.local/ns/{ns}/sa/{sa}",
        st.sampled_from(["shop", "payments", "Shop", "shop.x"]),
        st.sampled_from(["api", "web", "a.b", "x_y"]),
    ),
    st.sampled_from(
        [
            "spiffe://other.org/ns/shop/sa/api",
            "spiffe://cluster.local/ns/shop/sa/api/x",
            "spiffe://cluster.local/sa/api/ns/shop",
            "https://shop.example/api",
            "urn:shop:api",
        ]
    ),
)
dns_sans = st.sampled_from(["api.shop.svc.cluster.local", "spiffe.shop", "localhost"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uris=st.lists(uri_sans, max_size=3), dns=st.lists(dns_sans, max_size=2))
@example(uris=[SHOP_API], dns=["api.shop.svc.cluster.local"])
@example(uris=[SHOP_API, SHOP_API], dns=[])
def test_any_certificate_of_the_ca_speaks_only_for_its_one_spiffe_id(
    pki: PKI, tmp_path_factory: pytest.TempPathFactory, uris: list[str], dns: list[str]
) -> None:
    """Real certificates from serve's CA with random SAN sets, over a real handshake: a Check
    claiming shop/api is accepted exactly when the certificate carries one URI SAN, a valid
    SPIFFE id of the trust domain in namespace shop; anything else is refused, learns nothing."""
    ca, _ = pki
    out = tmp_path_factory.mktemp("fuzz")
    cert = odd_certificate(
        ca, out, "leaf", [*(f"URI:{u}" for u in uris), *(f"DNS:{d}" for d in dns)]
    )
    spiffe = parse_spiffe(uris[0]) if len(uris) == 1 else None
    expected = spiffe is not None and spiffe.trust_domain == "cluster.local"
    expected = expected and spiffe is not None and spiffe.namespace == "shop"

    async def main() -> None:
        async with _server(ca) as srv:
            try:
                reply = await _check(srv.ports["authz"], cert, check_request("GET", "/f"))
                accepted = reply.status.code == 0
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
                accepted = False
            assert accepted == expected, (uris, dns)
            learned = set(srv.engine.allowlist.services)
            assert learned == ({"shop/api"} if expected else set())

    asyncio.run(main())
