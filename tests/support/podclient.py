"""The client pod's calls for the node-tap tests: raw HTTP/1.1 (keep-alive, chunked, pipelined,
HEAD, 100-continue) and gRPC, all to HOST:PORT (the server pod's proxy). Prints a JSON summary.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def read_response(f: BinaryIO, head: bool = False) -> tuple[int, bytes]:
    status_line = f.readline()
    status = int(status_line.split()[1])
    length, chunked = None, False
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if status < 200 or head or status in (204, 304):
        return status, b""
    if chunked:
        body = b""
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                return status, body
            body += f.read(size)
            f.readline()
    return status, f.read(length or 0)


def http1(host: str, port: int) -> list[int]:
    statuses = []
    with socket.create_connection((host, port), timeout=10) as s:
        f = s.makefile("rb")
        h = f"Host: {host}:{port}\r\n"
        s.sendall(f"GET /users/42?x=1&y=two HTTP/1.1\r\n{h}\r\n".encode())
        statuses.append(read_response(f)[0])
        body = b'{"item": 1, "qty": 2}'
        s.sendall(
            f"POST /orders HTTP/1.1\r\n{h}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        statuses.append(read_response(f)[0])
        s.sendall(f"POST /upload HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n".encode())
        s.sendall(b"6\r\nhello \r\n")
        s.sendall(b"5\r\nworld\r\n0\r\n\r\n")
        statuses.append(read_response(f)[0])
        # three pipelined requests in one write
        s.sendall(
            f"GET /pipe/1 HTTP/1.1\r\n{h}\r\n".encode()
            + f"POST /pipe/2 HTTP/1.1\r\n{h}Content-Length: 3\r\n\r\nabc".encode()
            + f"GET /pipe/3 HTTP/1.1\r\n{h}\r\n".encode()
        )
        statuses += [read_response(f)[0] for _ in range(3)]
        s.sendall(f"HEAD /head HTTP/1.1\r\n{h}\r\n".encode())
        statuses.append(read_response(f, head=True)[0])
        s.sendall(f"GET /status/404 HTTP/1.1\r\n{h}\r\n".encode())
        statuses.append(read_response(f)[0])
        s.sendall(
            f"PUT /continue HTTP/1.1\r\n{h}Expect: 100-continue\r\n"
            f"Content-Length: 4\r\n\r\n".encode()
        )
        status, _ = read_response(f)
        if status == 100:
            s.sendall(b"data")
            status, _ = read_response(f)
        else:
            s.sendall(b"data")
        statuses.append(status)
    return statuses


def grpc_calls(host: str, port: int, n: int = 3) -> list[str]:
    with grpc.insecure_channel(f"{host}:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        out = []
        for _ in range(n):
            r = stub.Check(health_pb2.HealthCheckRequest(service="shop.Api"), timeout=5)
            out.append(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
        return out


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    print(json.dumps({"http1": http1(host, port), "grpc": grpc_calls(host, port)}))
