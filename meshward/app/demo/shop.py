"""The demo's sample shop: three aiohttp services and one gRPC service that call each other.

web (HTTP/JSON, the front) -> catalog (HTTP/JSON) and orders (HTTP/JSON); orders -> payments
(gRPC, `demo.shop.Payments`, messages are google.protobuf.Struct, so no protoc step). Every
call between services goes through the caller's outbound sidecar, whose address the app gets
in `peers`, and carries the incoming x-request-id on (as Istio asks of apps, for tracing).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from google.protobuf import json_format, struct_pb2

PAYMENTS_SERVICE = "demo.shop.Payments"
NAMESPACE = "shop"
CATEGORIES = ("books", "games", "music", "garden", "kitchen", "toys")
PRODUCTS: dict[int, dict[str, Any]] = {
    i: {
        "id": i,
        "name": f"{CATEGORIES[i % len(CATEGORIES)]} item {i}",
        "category": CATEGORIES[i % len(CATEGORIES)],
        "price_cents": 199 + 37 * i,
    }
    for i in range(1, 61)
}
FORWARDED = ("x-request-id",)


def struct(doc: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(doc)
    return out


def service_host(service: str) -> str:
    """The in-cluster DNS name a caller uses as authority for `service`."""
    return f"{service}.{NAMESPACE}.svc.cluster.local"


def _carry(request: web.Request) -> dict[str, str]:
    """Headers an app passes on to the services it calls."""
    return {h: request.headers[h] for h in FORWARDED if h in request.headers}


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        doc = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text='{"error": "body must be JSON"}') from None
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}')
    return doc


# -- catalog -----------------------------------------------------------------------------------


def catalog_app() -> web.Application:
    async def products(request: web.Request) -> web.Response:
        category = request.query.get("category", "")
        text = request.query.get("page", "1")
        page = max(int(text), 1) if text.isdigit() else 1
        items = [p for p in PRODUCTS.values() if not category or p["category"] == category]
        return web.json_response({"page": page, "items": items[(page - 1) * 5 : page * 5]})

    async def product(request: web.Request) -> web.Response:
        item = PRODUCTS.get(int(request.match_info["id"]))
        if item is None:
            raise web.HTTPNotFound(text='{"error": "no such product"}')
        return web.json_response(item)

    async def search(request: web.Request) -> web.Response:
        q = request.query.get("q", "").lower()
        return web.json_response(
            {"q": q, "items": [p for p in PRODUCTS.values() if q in p["name"]]}
        )

    app = web.Application()
    app.router.add_get("/products", products)
    app.router.add_get(r"/products/{id:\d+}", product)
    app.router.add_get("/search", search)
    return app


# -- orders ------------------------------------------------------------------------------------


def orders_app(payments_target: str) -> web.Application:
    """orders keeps orders in memory and charges through payments (gRPC via its sidecar)."""
    orders: dict[int, dict[str, Any]] = {}
    ids = itertools.count(1000)
    state: dict[str, Any] = {}

    async def on_startup(app: web.Application) -> None:
        state["channel"] = grpc.aio.insecure_channel(
            payments_target, options=(("grpc.default_authority", service_host("payments")),)
        )
        state["charge"] = state["channel"].unary_unary(
            f"/{PAYMENTS_SERVICE}/Charge",
            request_serializer=struct_pb2.Struct.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )

    async def on_cleanup(app: web.Application) -> None:
        await state["channel"].close()

    async def create(request: web.Request) -> web.Response:
        doc = await _json_body(request)
        item = PRODUCTS.get(int(doc.get("product_id", 0) or 0))
        quantity = int(doc.get("quantity", 1) or 1)
        if item is None:
            raise web.HTTPNotFound(text='{"error": "no such product"}')
        metadata = tuple(_carry(request).items())
        try:
            receipt = await state["charge"](
                struct(
                    {
                        "amount_cents": item["price_cents"] * quantity,
                        "currency": "EUR",
                        "customer": str(doc.get("customer", "")),
                    }
                ),
                metadata=metadata,
                timeout=5,
            )
        except grpc.aio.AioRpcError as err:
            raise web.HTTPBadGateway(
                text=json.dumps({"error": f"payments: {err.code().name}"}),
                content_type="application/json",
            ) from None
        order = {
            "id": next(ids),
            "product_id": item["id"],
            "quantity": quantity,
            "payment": json_format.MessageToDict(receipt),
        }
        orders[order["id"]] = order
        if len(orders) > 10_000:  # bounded: drop the oldest
            orders.pop(next(iter(orders)))
        return web.json_response(order, status=201)

    async def show(request: web.Request) -> web.Response:
        order = orders.get(int(request.match_info["id"]))
        if order is None:
            raise web.HTTPNotFound(text='{"error": "no such order"}')
        return web.json_response(order)

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/orders", create)
    app.router.add_get(r"/orders/{id:\d+}", show)
    return app


# -- web (the front) ---------------------------------------------------------------------------


def web_app(catalog: str, orders: str) -> web.Application:
    """The shop's front: JSON API over catalog and orders (both through web's sidecars)."""
    state: dict[str, aiohttp.ClientSession] = {}

    async def on_startup(app: web.Application) -> None:
        state["http"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def on_cleanup(app: web.Application) -> None:
        await state["http"].close()

    async def relay(
        request: web.Request, service: str, method: str, path: str, body: Any = None
    ) -> web.Response:
        address = catalog if service == "catalog" else orders
        # the service's DNS name as authority, as in a cluster (the sidecar listens locally)
        headers = {**_carry(request), "host": service_host(service)}
        async with state["http"].request(
            method, f"http://{address}{path}", params=request.query, json=body, headers=headers
        ) as resp:
            payload = await resp.read()
            if resp.status >= 400 and resp.status != 404:
                # a deeper sidecar (or service) said no: report it as a bad gateway
                return web.json_response(
                    {"error": f"upstream answered {resp.status}", "upstream": service},
                    status=502,
                )
            return web.Response(body=payload, status=resp.status, content_type="application/json")

    async def index(request: web.Request) -> web.Response:
        return web.Response(text="<h1>meshward demo shop</h1>", content_type="text/html")

    async def products(request: web.Request) -> web.Response:
        return await relay(request, "catalog", "GET", "/products")

    async def product(request: web.Request) -> web.Response:
        return await relay(request, "catalog", "GET", f"/products/{request.match_info['id']}")

    async def search(request: web.Request) -> web.Response:
        return await relay(request, "catalog", "GET", "/search")

    async def checkout(request: web.Request) -> web.Response:
        return await relay(request, "orders", "POST", "/orders", await _json_body(request))

    async def order(request: web.Request) -> web.Response:
        return await relay(request, "orders", "GET", f"/orders/{request.match_info['id']}")

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/", index)
    app.router.add_get("/api/products", products)
    app.router.add_get(r"/api/products/{id:\d+}", product)
    app.router.add_get("/api/search", search)
    app.router.add_post("/api/checkout", checkout)
    app.router.add_get(r"/api/orders/{id:\d+}", order)
    return app


# -- payments (gRPC) ---------------------------------------------------------------------------


def payments_handler() -> grpc.GenericRpcHandler:
    receipts = itertools.count(1)

    async def charge(request: struct_pb2.Struct, context: grpc.aio.ServicerContext) -> Any:
        amount = (
            request.fields["amount_cents"].number_value if "amount_cents" in request.fields else 0
        )
        if amount <= 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "amount_cents must be > 0")
        return struct({"receipt": f"r-{next(receipts)}", "amount_cents": amount, "status": "paid"})

    async def refund(request: struct_pb2.Struct, context: grpc.aio.ServicerContext) -> Any:
        return struct({"status": "refunded"})

    def unary(fn: Callable[..., Awaitable[Any]]) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=struct_pb2.Struct.FromString,
            response_serializer=struct_pb2.Struct.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        PAYMENTS_SERVICE, {"Charge": unary(charge), "Refund": unary(refund)}
    )


# -- running them ------------------------------------------------------------------------------


@dataclass
class RunningShop:
    """The shop's apps, listening on loopback: name -> port."""

    ports: dict[str, int] = field(default_factory=dict)
    runners: list[web.AppRunner] = field(default_factory=list)
    grpc_server: grpc.aio.Server | None = None

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=0.2)
            self.grpc_server = None


async def serve_app(app: web.Application, shop: RunningShop, name: str) -> int:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    shop.runners.append(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    shop.ports[name] = port
    return port


async def start_payments(shop: RunningShop) -> int:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((payments_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    shop.grpc_server = server
    shop.ports["payments"] = port
    return port


async def wait_tcp(port: int, timeout: float = 5.0) -> None:
    """Until something accepts on 127.0.0.1:port."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)
