"""The namespace node harness itself: pods reach each other, everything is cleaned up."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.netns import Node, need_netns

pytestmark = pytest.mark.integration


def test_pods_talk_and_cleanup() -> None:
    need_netns()
    with Node() as node:
        a = node.add_pod("a")
        b = node.add_pod("b")
        a.run(["ping", "-c", "1", "-W", "2", b.ip])
        srv = b.popen(["sleep", "60"])
        names = [a.netns, b.netns, node.netns]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(n in listed for n in names)
    assert srv.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)


def test_cleanup_on_failure() -> None:
    need_netns()
    with pytest.raises(RuntimeError), Node() as node:
        pod = node.add_pod("x")
        name = pod.netns
        raise RuntimeError("boom")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert name not in listed
