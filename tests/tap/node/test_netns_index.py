"""meshward.tap.node.netns: a pod's network namespace found from its IP alone, in real
network namespaces: named ones (/var/run/netns) and an unnamed one seen only through /proc."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from meshward.tap.node.netns import NamespaceIndex, candidates
from meshward.tap.node.pipeline import namespace_addresses
from tests.support.netns import Node, need_netns

pytestmark = pytest.mark.integration


@pytest.fixture
def node() -> Iterator[Node]:
    need_netns()
    with Node(subnet="10.214.0") as n:
        yield n


def _same(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def test_named_namespaces_are_found_by_ip(node: Node) -> None:
    web, api = node.add_pod("web"), node.add_pod("api")
    index = NamespaceIndex(namespace_addresses)
    assert _same(index.find(web.ip) or "", web.path)
    assert _same(index.find(api.ip) or "", api.path)
    scans = index.scans
    assert index.find(web.ip) and index.scans == scans  # cached: no rescan
    assert index.find("10.214.0.250") is None  # unknown: one rescan, then None
    assert index.scans == scans + 1


def test_an_unnamed_namespace_is_found_through_proc(node: Node) -> None:
    """What a runtime without /var/run/netns leaves: only a process holds the namespace."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        deadline = time.monotonic() + 5
        while os.readlink(path) == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make a namespace"
            time.sleep(0.05)
        peer = f"mwx{os.getpid() % 100000}"
        subprocess.run(
            [
                "ip",
                "-n",
                node.netns,
                "link",
                "add",
                peer,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                str(holder.pid),
            ],
            check=True,
        )
        subprocess.run(
            [
                "nsenter",
                "-t",
                str(holder.pid),
                "-n",
                "ip",
                "addr",
                "add",
                "10.214.0.77/24",
                "dev",
                "eth0",
            ],
            check=True,
        )
        assert any(p.startswith("/proc/") for p in candidates().values())
        index = NamespaceIndex(namespace_addresses)
        found = index.find("10.214.0.77")
        assert found is not None and _same(found, path)
    finally:
        holder.kill()
        holder.wait()
    # the namespace is gone with its process: the index forgets it on the next rescan
    index.refresh()
    assert index.find("10.214.0.77") is None


def test_dedup_and_own_namespace_left_out(node: Node) -> None:
    pod = node.add_pod("web")
    holders = [
        subprocess.Popen(["ip", "netns", "exec", pod.netns, "sleep", "30"]) for _ in range(3)
    ]
    try:
        time.sleep(0.3)
        found = candidates()
        mine = os.stat("/proc/self/ns/net")
        assert (mine.st_dev, mine.st_ino) not in found
        pod_key = (os.stat(pod.path).st_dev, os.stat(pod.path).st_ino)
        assert found[pod_key].endswith(pod.netns)  # the named mount wins over /proc paths
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_an_address_in_two_namespaces_is_used_for_neither() -> None:
    paths = {(1, 1): "/ns/a", (1, 2): "/ns/b"}
    index = NamespaceIndex(
        lambda path: ["10.0.0.5", "10.0.0.6"] if path == "/ns/a" else ["10.0.0.5"],
        scan=lambda: paths,
    )
    assert index.find("10.0.0.5") is None
    assert "10.0.0.5" in index.ambiguous
    del paths[(1, 2)]  # one of them went: the address is the other's again
    assert index.find("10.0.0.5") == "/ns/a"
    assert index.ambiguous == set()
