"""The app of the test pods: aiohttp on HOST:HTTP_PORT and a gRPC Health service on HOST:GRPC_PORT.

Run as `python podapp.py HOST HTTP_PORT GRPC_PORT`; prints "ready" once both listen.
HTTP: any method and path; `/status/NNN` answers NNN, everything else 200 with a JSON echo.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer


async def handle(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    tail = request.match_info["tail"]
    if tail.startswith("status/") and tail[7:].isdigit():
        return web.Response(status=int(tail[7:]), text="status\n")
    echo = {"method": request.method, "path": request.path, "len": len(body)}
    return web.Response(text=json.dumps(echo), content_type="application/json")


async def main(host: str, http_port: int, grpc_port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, http_port, backlog=1024).start()
    server = grpc.aio.server()
    servicer = HealthServicer()
    await servicer.set("shop.Api", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"{host}:{grpc_port}")
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
