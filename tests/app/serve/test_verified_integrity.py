"""The "already judged by ext_authz" skip and the both-ends join key on verified identities, on a
real serve with mTLS (issue 11, item 4): a forged clean Check carrying a real request's
x-request-id, sent by another sidecar, cannot suppress the real tap copy's alert, and a forged
outbound view cannot take the real caller's place in the join."""

from __future__ import annotations

import asyncio
import functools

import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc

from meshward.core.engine import Engine, EngineConfig, detector_for
from meshward.istio.certs import MeshCA
from meshward.istio.tls import SidecarTLS
from meshward.runtime.grpcpeer import PeerPolicy
from tests.support.grpcmtls import aio_channel
from tests.support.serve import check_request, running_server, tap_messages

pytestmark = pytest.mark.usefixtures("openssl")

RID = "req-42"
SQLI = "/items?id=1%27%20OR%20%271%27%3D%271"


@functools.cache
def _engine_config() -> EngineConfig:
    return EngineConfig()


async def _check(port: int, tls: SidecarTLS, workload: str, path: str) -> int:
    req = check_request("GET", path, namespace="shop", workload=workload, request_id=RID)
    req.attributes.request.http.host = "api.shop"  # the authority the tap copy carries
    async with aio_channel(port, tls) as ch:
        reply = await external_auth_pb2_grpc.AuthorizationStub(ch).Check(req, timeout=5)
        return reply.status.code


async def _tap(
    port: int,
    tls: SidecarTLS,
    messages: list[external_processor_pb2.ProcessingRequest],
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    async with aio_channel(port, tls) as ch:
        stub = external_processor_pb2_grpc.ExternalProcessorStub(ch)
        async for _ in stub.Process(iter(messages), metadata=metadata):
            pass


def _copy(path: str, caller: str = "web") -> list[external_processor_pb2.ProcessingRequest]:
    msgs = tap_messages("GET", path, request_id=RID)
    attrs = msgs[0].attributes["envoy.filters.http.ext_proc"]
    uri = f"spiffe://cluster.local/ns/shop/sa/{caller}"
    attrs.fields["connection.uri_san_peer_certificate"].string_value = uri
    return msgs


async def _wait(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


def test_forged_clean_check_from_another_sidecar_hides_nothing(tmp_path: object) -> None:
    ca = MeshCA(tmp_path / "ca")  # type: ignore[operator]
    api = ca.issue("shop", "api")
    cart = ca.issue("shop", "cart")  # another sidecar of the same namespace

    async def main() -> None:
        engine = Engine(_engine_config(), detector_for(_engine_config()))
        async with running_server(
            engine=engine, peers=PeerPolicy(), grpc_ca_dir=str(ca.dir)
        ) as srv:
            await srv.set_mode("shop", "monitor")
            authz, tap = srv.ports["authz"], srv.ports["tap"]
            # cart's sidecar claims to guard `api` and sends a clean Check with the real
            # request's id, authority, method and path (the attack of issue 11)
            assert await _check(authz, cart, "api", "/items") == 0
            # api's sidecar then reports the real request: its copy must still be judged
            await _tap(tap, api, _copy(SQLI), (("x-meshward-workload", "api"),))
            await _wait(lambda: srv.engine.counters["alerts"] >= 1)
            alerts = await srv.alerts()
            assert any(
                a["request_id"] == RID and "SQL.Injection" in {t["name"] for t in a["threats"]}
                for a in alerts
            )
            text = srv.metrics.exposition().decode()
            assert 'reason="judged-by-extauthz"' not in text
            # the real sidecar's own Check does mark its own copy as judged
            assert await _check(authz, api, "api", "/clean") == 0
            await _tap(tap, api, _copy("/clean"), (("x-meshward-workload", "api"),))
            await _wait(lambda: 'reason="judged-by-extauthz"' in srv.metrics.exposition().decode())

    asyncio.run(main())


def test_forged_outbound_view_cannot_take_the_callers_place(tmp_path: object) -> None:
    ca = MeshCA(tmp_path / "ca")  # type: ignore[operator]
    api, web, cart = (ca.issue("shop", sa) for sa in ("api", "web", "cart"))
    outbound = (("x-meshward-direction", "outbound"),)

    async def main() -> None:
        async with running_server(peers=PeerPolicy(), grpc_ca_dir=str(ca.dir)) as srv:
            tap = srv.ports["tap"]

            def joins() -> str:
                return srv.metrics.exposition().decode()

            # cart's sidecar forges web's outbound view of the call, with another path
            await _tap(tap, cart, _copy("/items?forged=1"), outbound)
            # api's sidecar reports the real call from web: nothing of cart's may pair with it
            await _tap(tap, api, _copy("/items"))
            await asyncio.sleep(0.2)
            assert "meshward_exchange_joins_total{" not in joins()
            # web's own outbound view joins it
            await _tap(tap, web, _copy("/items"), outbound)
            await _wait(lambda: 'meshward_exchange_joins_total{outcome="joined"} 1.0' in joins())
            assert 'outcome="mismatch"' not in joins()

    asyncio.run(main())
