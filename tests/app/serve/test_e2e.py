"""End to end through a real Envoy 1.40: sidecar bootstraps from istio/, a real `meshward serve`."""

from __future__ import annotations

import json
import subprocess
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.certs import MeshCA
from meshward.istio.envoyproc import EnvoyProcess
from meshward.runtime.grpcpeer import PeerPolicy
from tests.support.envoy_http import ServerThread, free_port, http

pytestmark = pytest.mark.integration

ORDER = json.dumps({"sku": "book-1", "qty": 2, "note": "gift wrap"}).encode()
SQLI = json.dumps({"sku": "1' OR '1'='1' -- ", "qty": 2, "note": "x"}).encode()
JSON = {"content-type": "application/json"}


def sidecar(srv: ServerThread, app: int, mode: str, envoy_bin: str, **kw: Any) -> EnvoyProcess:
    boot = render_bootstrap(
        0,
        f"127.0.0.1:{app}",
        "shop",
        kw.pop("workload", "api"),
        mode,
        authz_port=srv.ports["authz"],
        tap_port=srv.ports["tap"],
        **kw,
    )
    return EnvoyProcess(boot, envoy=envoy_bin, name=f"{mode}-sidecar")


def learn_traffic(port: int) -> int:
    sent = 0
    for i in range(1, 6):
        assert http(port, f"/api/items/{i}?page={i}")[0] == 200
        assert http(port, "/api/orders", ORDER, headers=JSON)[0] == 200
        sent += 2
    return sent


def verified(tmp_path: Path) -> tuple[MeshCA, dict[str, Any]]:
    """A CA and the ServerThread settings that make serve require certificates from it."""
    ca = MeshCA(tmp_path / "ca")
    return ca, {"peers": PeerPolicy(), "grpc_ca_dir": str(ca.dir)}


def test_learn_then_enforce(envoy_bin: str, echo_app: int, tmp_path: Path) -> None:
    """Over mTLS to serve: the sidecar's certificate (shop/api) names the destination."""
    ca, secure = verified(tmp_path)
    api = {"meshward_tls": ca.issue("shop", "api")}
    with ServerThread(str(tmp_path / "m.db"), **secure) as srv:
        with sidecar(srv, echo_app, "learn", envoy_bin, **api) as envoy:
            n = learn_traffic(envoy.port)
            srv.wait_metric('meshward_observations_total{source="envoy-tap"}', n)
        services = srv.api("GET", "/api/v1/allowlist")["services"]
        assert [s["destination"] for s in services] == ["shop/api"]
        srv.api("PUT", "/api/v1/modes/shop", {"mode": "enforce"})
        assert srv.api("GET", "/api/v1/modes")["modes"]["shop"] == "enforce"
        with sidecar(srv, echo_app, "enforce", envoy_bin, **api) as envoy:
            assert http(envoy.port, "/api/items/42?page=3")[0] == 200
            assert http(envoy.port, "/api/orders", ORDER, headers=JSON)[0] == 200
            # a denied caller learns nothing but the request id; the reasons go to the alert
            denied = {}
            for path, doc, why in (
                ("/admin/export", None, "unknown-path"),
                ("/api/orders", SQLI, "SQL.Injection"),
            ):
                status, headers, body = http(envoy.port, path, doc, headers=JSON)
                assert status == 403
                assert not [h for h in headers if h.lower().startswith("x-meshward")]
                said = json.loads(body)
                assert set(said) == {"error", "request_id"}, said
                assert said["error"] == "denied by meshward" and said["request_id"]
                assert why.encode() not in body
                denied[said["request_id"]] = why
        alerts = srv.api("GET", "/api/v1/alerts?limit=10")["alerts"]
        assert {a["verdict"] for a in alerts} == {"deny"}
        for a in alerts:  # each denial's alert, found by the request id the caller was given
            why = denied[a["request_id"]]
            assert why in a["reasons"] + [t["name"] for t in a["threats"]]
        assert srv.metric('meshward_checks_total{result="denied"}') == 2


def test_monitor_never_blocks_but_alerts(envoy_bin: str, echo_app: int, tmp_path: Path) -> None:
    with ServerThread(str(tmp_path / "m.db")) as srv:
        with sidecar(srv, echo_app, "learn", envoy_bin) as envoy:
            n = learn_traffic(envoy.port)
            srv.wait_metric('meshward_observations_total{source="envoy-tap"}', n)
        srv.api("PUT", "/api/v1/modes/shop", {"mode": "monitor"})
        with sidecar(srv, echo_app, "monitor", envoy_bin) as envoy:
            assert http(envoy.port, "/admin/export")[0] == 200
            assert http(envoy.port, "/api/orders", SQLI, headers=JSON)[0] == 200
            h2 = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "--http2-prior-knowledge",
                    f"http://127.0.0.1:{envoy.port}/admin/h2",
                ],
                capture_output=True,
                timeout=10,
                check=False,
            )
            assert h2.returncode == 0
            srv.wait_metric('meshward_observations_total{source="envoy-tap"}', n + 3)
        alerts = srv.api("GET", "/api/v1/alerts?limit=10")["alerts"]
        by_path = {a["path"]: a for a in alerts}
        assert by_path["/admin/export"]["protocol"] == "http/1.1"
        assert by_path["/admin/h2"]["protocol"] == "h2"  # the tap asks Envoy for request.protocol
        assert by_path["/admin/export"]["verdict"] == "alert"
        assert "unknown-path" in by_path["/admin/export"]["reasons"]
        assert "SQL.Injection" in {t["name"] for t in by_path["/api/orders"]["threats"]}
        assert all(a["mode"] == "monitor" for a in alerts)


def test_fail_closed_and_fail_open(envoy_bin: str, echo_app: int, tmp_path: Path) -> None:
    """meshward stopped: the enforce sidecar answers 403, learn and monitor ones pass (200)."""
    authz, tap = free_port(), free_port()
    with ServerThread(str(tmp_path / "m.db"), authz, tap) as srv:
        srv.api("PUT", "/api/v1/modes/shop", {"mode": "enforce"})
        envoys = {
            m: sidecar(srv, echo_app, m, envoy_bin).start() for m in ("enforce", "learn", "monitor")
        }
    try:
        for mode, expected in (("enforce", 403), ("learn", 200), ("monitor", 200)):
            assert http(envoys[mode].port, "/api/items/1")[0] == expected, mode
        # and up again on the same ports: the enforce sidecar decides through meshward again
        with ServerThread(str(tmp_path / "m.db"), authz, tap) as srv:
            srv.api("PUT", "/api/v1/modes/shop", {"mode": "learn"})
            assert http(envoys["enforce"].port, "/api/items/1")[0] == 200
    finally:
        for e in envoys.values():
            e.stop()


def test_restart_keeps_allowlists(envoy_bin: str, echo_app: int, tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    authz, tap = free_port(), free_port()
    with ServerThread(db, authz, tap) as srv:
        with sidecar(srv, echo_app, "learn", envoy_bin) as envoy:
            n = learn_traffic(envoy.port)
            srv.wait_metric('meshward_observations_total{source="envoy-tap"}', n)
        srv.api("PUT", "/api/v1/modes/shop", {"mode": "enforce"})
        envoy = sidecar(srv, echo_app, "enforce", envoy_bin).start()
    try:
        assert http(envoy.port, "/api/items/1")[0] == 403  # meshward down: closed
        with ServerThread(db, authz, tap) as srv:  # a new process on the same store
            assert srv.api("GET", "/api/v1/modes")["modes"]["shop"] == "enforce"
            assert http(envoy.port, "/api/items/9?page=1")[0] == 200
            assert http(envoy.port, "/api/orders", ORDER, headers=JSON)[0] == 200
            assert http(envoy.port, "/api/secret")[0] == 403
    finally:
        envoy.stop()


def _grpc_app() -> tuple[grpc.Server, int]:
    def reply(request: struct_pb2.Struct, context: Any) -> struct_pb2.Struct:
        return struct_pb2.Struct(fields={"ok": struct_pb2.Value(bool_value=True)})

    methods = {
        name: grpc.unary_unary_rpc_method_handler(
            reply,
            request_deserializer=struct_pb2.Struct.FromString,
            response_serializer=struct_pb2.Struct.SerializeToString,
        )
        for name in ("GetItem", "ListItems", "DeleteAll")
    }
    app = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    app.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("shop.Catalog", methods),))
    port = app.add_insecure_port("127.0.0.1:0")
    app.start()
    return app, port


def _call(port: int, method: str) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(
            f"/shop.Catalog/{method}",
            request_serializer=struct_pb2.Struct.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        try:
            call(struct_pb2.Struct(fields={"id": struct_pb2.Value(number_value=7)}), timeout=5)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK


def test_grpc_service_learned_by_service_and_method(envoy_bin: str, tmp_path: Path) -> None:
    app, grpc_port = _grpc_app()
    try:
        with ServerThread(str(tmp_path / "m.db")) as srv:
            kw = {"workload": "catalog", "upstream_h2": True}
            with sidecar(srv, grpc_port, "learn", envoy_bin, **kw) as envoy:
                for _ in range(3):
                    assert _call(envoy.port, "GetItem") == grpc.StatusCode.OK
                    assert _call(envoy.port, "ListItems") == grpc.StatusCode.OK
                srv.wait_metric('meshward_observations_total{source="envoy-tap"}', 6)
            doc = json.dumps(srv.api("GET", "/api/v1/allowlist?destination=shop/catalog"))
            assert "GetItem" in doc and "ListItems" in doc and "DeleteAll" not in doc
            srv.api("PUT", "/api/v1/modes/shop", {"mode": "enforce"})
            with sidecar(srv, grpc_port, "enforce", envoy_bin, **kw) as envoy:
                assert _call(envoy.port, "GetItem") == grpc.StatusCode.OK
                assert _call(envoy.port, "DeleteAll") == grpc.StatusCode.PERMISSION_DENIED
            alerts = srv.api("GET", "/api/v1/alerts?limit=5")["alerts"]
            assert "unknown-grpc-method" in alerts[0]["reasons"]
    finally:
        app.stop(grace=None)


def test_both_ends_join(envoy_bin: str, echo_app: int, tmp_path: Path) -> None:
    """web's outbound sidecar -mTLS-> orders' inbound sidecar (enforce chain, namespace in
    learn): one exchange under one x-request-id; a path rewritten in between is flagged. Both
    sidecars reach serve over mTLS with their own certificates."""
    ca, secure = verified(tmp_path)
    with ServerThread(str(tmp_path / "m.db"), **secure) as srv:
        orders = ca.issue("shop", "orders")
        inbound = sidecar(
            srv, echo_app, "enforce", envoy_bin, workload="orders", tls=orders, meshward_tls=orders
        )
        with inbound as callee:
            out = render_bootstrap(
                0,
                f"127.0.0.1:{callee.port}",
                "shop",
                "web",
                "learn",
                authz_port=srv.ports["authz"],
                tap_port=srv.ports["tap"],
                direction="outbound",
                tls=(web := ca.issue("shop", "web")),
                meshward_tls=web,
            )
            with EnvoyProcess(out, envoy=envoy_bin, name="web-out") as caller:
                rid = "join-test-1"
                assert http(caller.port, "/orders/7", headers={"x-request-id": rid})[0] == 200
                srv.wait_metric('meshward_exchange_joins_total{outcome="joined"}', 1)
            # something between the sidecars rewrites the path: both views disagree
            vhost = out["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
                "typed_config"
            ]["route_config"]["virtual_hosts"][0]
            vhost["routes"][0]["route"]["prefix_rewrite"] = "/orders/all/"
            with EnvoyProcess(out, envoy=envoy_bin, name="web-out-tampered") as caller:
                rid = "join-test-2"
                assert http(caller.port, "/orders/7", headers={"x-request-id": rid})[0] == 200
                srv.wait_metric('meshward_exchange_joins_total{outcome="mismatch"}', 1)
        exchanges = srv.api("GET", "/api/v1/exchanges")["exchanges"]
        ex = next(e for e in exchanges if e["request_id"] == "join-test-2")
        assert ex["mismatches"] == ["path"]
        assert ex["outbound"]["path"] == "/orders/7"
        assert ex["inbound"]["path"] == "/orders/all/orders/7"
        assert ex["outbound"]["source"] == "shop/web"
        assert ex["inbound"]["source"] == "shop/web"  # from the SPIFFE peer certificate
        assert ex["inbound"]["destination"] == "shop/orders"
        alerts = srv.api("GET", "/api/v1/alerts?limit=10")["alerts"]
        mism = [a for a in alerts if a["request_id"] == "join-test-2"]
        assert mism and "Exchange.Mismatch" in {t["name"] for t in mism[0]["threats"]}
        assert mism[0]["source"] == "shop/web"
        assert ex["verdicts"] and ex["verdicts"][0]["verdict"] == "alert"
        # learned once, by ext_authz for the callee (the tap skipped what Check had judged),
        # with the caller's SPIFFE identity; the caller's outbound view only fed the join
        doc = srv.api("GET", "/api/v1/allowlist")
        assert [s["destination"] for s in doc["services"]] == ["shop/orders"]
        assert "shop/web" in json.dumps(doc)
        assert srv.metric('meshward_drops_total{reason="judged-by-extauthz",where="tap"}') >= 1
