"""The kernel filters on a real pod loopback: app data once, no pure ACKs, no mesh ports."""

from __future__ import annotations

import sys
import time

import pytest

from meshward.core.wire import LINKERD_ADMIN_PORT as ADMIN_PORT
from meshward.core.wire import LINKERD_PROXY_PORTS as MESH_PORTS
from meshward.tap.node.capture import Capture, assemble, tcp_filter
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


VIA_PAIRS = """
import socket, sys
ip = sys.argv[1]
srv = socket.create_server((ip, 7000))
for src in ("127.0.0.6", "127.0.0.1", ip):  # the proxy's hop, then two that are not
    c = socket.create_connection((ip, 7000), source_address=(src, 0))
    s, _ = srv.accept()
    c.sendall(b"from " + src.encode()); assert s.recv(100)
    s.sendall(b"to " + src.encode()); assert c.recv(100)
    c.close(); s.close()
"""


@pytest.mark.integration
def test_lo_filter_via_istios_inbound_bind() -> None:
    """An Istio pod's lo: only connections with 127.0.0.6 at one end, both directions."""
    from meshward.core.wire import ISTIO_INBOUND_BIND, ISTIO_PROXY_PORTS

    need_netns()
    with Node() as node:
        pod = node.add_pod("istio")
        prog = tcp_filter(
            ISTIO_PROXY_PORTS, include=False, drop_outgoing=True, via=ISTIO_INBOUND_BIND
        )
        cap = Capture("lo", prog, pod.netns)
        try:
            pod.run([sys.executable, "-c", VIA_PAIRS, pod.ip])
            packets: list = []
            deadline = time.monotonic() + 2
            while sum(bool(p.payload) for p in packets) < 2 and time.monotonic() < deadline:
                cap.drain(lambda frame, ts: packets.append(decode(frame, ts)))
                time.sleep(0.05)
            time.sleep(0.2)  # anything else would have arrived by now
            cap.drain(lambda frame, ts: packets.append(decode(frame, ts)))
        finally:
            cap.close()
    data = [bytes(p.payload) for p in packets if p.payload]
    assert data == [b"from 127.0.0.6", b"to 127.0.0.6"]
    assert {p.src for p in packets} == {"127.0.0.6", pod.ip}
