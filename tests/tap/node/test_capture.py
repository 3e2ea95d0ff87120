"""The kernel filters on a real pod loopback: app data once, no pure ACKs, no mesh ports."""

from __future__ import annotations

import sys
import time

import pytest

from meshward.core.wire import LINKERD_ADMIN_PORT as ADMIN_PORT
from meshward.core.wire import LINKERD_PROXY_PORTS as MESH_PORTS
from meshward.tap.node.capture import Capture, assemble, proxy_hop_filter, tcp_filter
from meshward.tap.node.packet import decode
from tests.support.netns import Node, need_netns

SERVER = """
import socket, sys, threading
ip = sys.argv[1]
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port)); s.listen()
    while True:
        c, _ = s.accept(); d = c.recv(100); c.sendall(b"pong:" + d); c.close()
for p in (7000, int(sys.argv[2])):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = """
import socket, sys
for port in (7000, int(sys.argv[2]), 7000):
    c = socket.create_connection((sys.argv[1], port)); c.sendall(b"ping-" + str(port).encode())
    assert c.recv(100).startswith(b"pong"); c.close()
"""


def test_assemble_resolves_labels() -> None:
    prog = assemble([(0x15, "yes", 0, 1), (0x06, 0, 0, 0), "yes", (0x06, 0, 0, 7)])
    assert prog == [(0x15, 1, 0, 1), (0x06, 0, 0, 0), (0x06, 0, 0, 7)]
    with pytest.raises(KeyError):
        assemble([(0x15, "nowhere", 0, 1)])


@pytest.mark.integration
def test_lo_filter_in_a_pod() -> None:
    need_netns()
    import subprocess

    with Node() as node:
        pod = node.add_pod("app")
        srv = pod.popen(
            [sys.executable, "-c", SERVER, pod.ip, str(ADMIN_PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        cap = Capture("lo", tcp_filter(MESH_PORTS, include=False, drop_outgoing=True), pod.netns)
        try:
            pod.run([sys.executable, "-c", CLIENT, pod.ip, str(ADMIN_PORT)])
            time.sleep(0.2)
            packets: list = []
            deadline = time.monotonic() + 2
            while len(packets) < 4 and time.monotonic() < deadline:  # blocks retire in 10 ms
                cap.drain(lambda frame, ts: packets.append(decode(frame, ts)))
                time.sleep(0.05)
            time.sleep(0.2)
            cap.drain(lambda frame, ts: packets.append(decode(frame, ts)))
            _, drops = cap.read_stats()
        finally:
            cap.close()
    assert all(p is not None for p in packets)
    ports = {(p.sport, p.dport) for p in packets}
    assert all(ADMIN_PORT not in pair for pair in ports)
    data = [bytes(p.payload) for p in packets if p.payload]
    assert sorted(data) == sorted([b"ping-7000", b"pong:ping-7000"] * 2)  # each copy once
    assert all(p.payload or p.tcp_flags & 0x07 for p in packets)  # no pure ACKs
    assert drops == 0


V6_PAIR = """
import socket
srv = socket.create_server(("::1", 7000), family=socket.AF_INET6)
c = socket.create_connection(("::1", 7000))
s, _ = srv.accept()
c.sendall(b"GET /v6 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
assert s.recv(100)
s.sendall(b"HTTP/1.1 204 No Content\\r\\n\\r\\n")
assert c.recv(100)
c.close(); s.close()
"""


@pytest.mark.integration
def test_lo_filter_ipv6() -> None:
    need_netns()
    with Node() as node:
        pod = node.add_pod("app6")
        pod.run(["sysctl", "-q", "-w", "net.ipv6.conf.lo.disable_ipv6=0"])
        cap = Capture("lo", tcp_filter(MESH_PORTS, include=False, drop_outgoing=True), pod.netns)
        try:
            pod.run([sys.executable, "-c", V6_PAIR])
            time.sleep(0.2)
            packets: list = []
            cap.drain(lambda frame, ts: packets.append(decode(frame, ts)))
        finally:
            cap.close()
    data = [bytes(p.payload) for p in packets if p.payload]
    assert all(p.ip_version == 6 for p in packets)
    assert data == [b"GET /v6 HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"]
    assert all(p.payload or p.tcp_flags & 0x07 for p in packets)


HOPS = """
import socket, sys
ip = sys.argv[1]
srv = socket.create_server((ip, 7000))
get = b"GET /orders/7 HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n"
headers = bytes.fromhex("00000a010400000003") + bytes(10)  # HTTP/2 HEADERS on stream 3
for src, first in (("127.0.0.6", get), ("127.0.0.6", headers), ("127.0.0.1", get), (ip, get)):
    c = socket.create_connection((ip, 7000), source_address=(src, 0))
    s, _ = srv.accept()
    c.sendall(first); assert s.recv(100)
    c.sendall(b"a body, not a request"); assert s.recv(100)
    s.sendall(b"HTTP/1.1 200 OK\\r\\n\\r\\n"); assert c.recv(100)
    c.close(); s.close()
"""


@pytest.mark.integration
def test_proxy_hop_filter_keeps_the_request_starts_from_istios_inbound_bind() -> None:
    """An Istio pod's lo: only what 127.0.0.6 sends that starts a request, not the bodies, the
    answers, or the loopback traffic of anyone else."""
    from meshward.core.wire import ISTIO_INBOUND_BIND

    need_netns()
    with Node() as node:
        pod = node.add_pod("istio")
        cap = Capture("lo", proxy_hop_filter(ISTIO_INBOUND_BIND), pod.netns)
        try:
            pod.run([sys.executable, "-c", HOPS, pod.ip])
            packets: list = []
            deadline = time.monotonic() + 2
            while len(packets) < 2 and time.monotonic() < deadline:
                cap.drain(lambda frame, ts: packets.append(decode(frame, ts)))
                time.sleep(0.05)
            time.sleep(0.2)  # anything else would have arrived by now
            cap.drain(lambda frame, ts: packets.append(decode(frame, ts)))
        finally:
            cap.close()
    assert [bytes(p.payload[:4]) for p in packets] == [b"GET ", bytes.fromhex("00000a01")]
    assert {p.src for p in packets} == {"127.0.0.6"} and {p.dst for p in packets} == {pod.ip}
