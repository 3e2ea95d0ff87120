"""The pods' side of bench/nodetap.py's many-pod phase: one process plays every pod's app, one
every pod's linkerd-proxy (its inbound side: a keep-alive connection to the app over the pod's
`lo`, adding `l5d-client-id`), so a hundred pods fit on a two-core machine where a hundred
Envoys would not. Each socket is created inside its pod's network namespace (a setns thread,
as the node tap's captures are), so the bytes on each pod's `lo` are what linkerd-proxy and the
app would exchange there; one asyncio loop then drives them all.

    python bench/multipod.py app PODS.json             # prints "ready", serves until killed
    python bench/multipod.py load PODS.json RATE SECONDS   # prints a JSON summary

PODS.json: [[netns, ip], ...]. The app answers every request with a small JSON body.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshward.tap.node.capture import in_netns

APP_PORT = 8080
BODY = b'{"id":42,"name":"widget","ok":true}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
CALLER = "web.shop.serviceaccount.identity.linkerd.cluster.local"


def _listener(ip: str) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, APP_PORT))
    s.listen(64)
    s.setblocking(False)
    return s


def _connected(ip: str) -> socket.socket:
    s = socket.create_connection((ip, APP_PORT), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    return s


async def _serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                return
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def app(pods: list[tuple[str, str]]) -> None:
    servers = [
        await asyncio.start_server(_serve_conn, sock=in_netns(netns, _listener, ip))
        for netns, ip in pods
    ]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def _pod_load(
    netns: str, ip: str, interval: float, end: float, counts: dict[str, int]
) -> None:
    reader, writer = await asyncio.open_connection(sock=in_netns(netns, _connected, ip))
    request = (
        f"GET /users/42?x=1 HTTP/1.1\r\nHost: {ip}:{APP_PORT}\r\nl5d-client-id: {CALLER}\r\n\r\n"
    ).encode()
    next_at = time.monotonic()
    while next_at < end:
        writer.write(request)
        counts["sent"] += 1
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(len(BODY))
        counts["done"] += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    writer.close()


async def load(pods: list[tuple[str, str]], rate: float, seconds: float) -> dict[str, float]:
    counts = {"sent": 0, "done": 0}
    interval = len(pods) / rate  # each pod's connection carries rate / pods requests a second
    start = time.monotonic()
    end = start + seconds
    await asyncio.gather(*(_pod_load(ns, ip, interval, end, counts) for ns, ip in pods))
    took = time.monotonic() - start
    return {**counts, "seconds": round(took, 2), "achieved_rps": round(counts["done"] / took, 1)}


def main() -> int:
    role, path = sys.argv[1], sys.argv[2]
    pods = [(ns, ip) for ns, ip in json.loads(Path(path).read_text())]
    if role == "app":
        asyncio.run(app(pods))
    else:
        print(json.dumps(asyncio.run(load(pods, float(sys.argv[3]), float(sys.argv[4])))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
