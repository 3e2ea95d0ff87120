"""An attach that fails after discovery decided the pod is to be watched (its namespace not
there yet, or briefly unreadable) is retried with backoff until it works or the pod is
detached; it is never just counted and forgotten."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from meshward.core.observation import Identity
from meshward.tap.node.pipeline import NodeTap, PodTarget
from tests.support.netns import Node, need_netns

pytestmark = pytest.mark.integration


@pytest.fixture
def tap() -> Iterator[NodeTap]:
    need_netns()
    t = NodeTap([], [], lambda obs: None)
    t.retry_base = 0.3
    t.open()
    stop = threading.Event()
    loop = threading.Thread(target=t.run, args=(stop,), daemon=True)
    loop.start()
    yield t
    stop.set()
    loop.join(10)
    t.close()


def _until(cond: Callable[[], object], timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_failed_attach_is_retried_until_the_namespace_is_there(tap: NodeTap) -> None:
    with Node(subnet="10.218.0") as node:
        target = PodTarget(f"/run/netns/{node.run_id}-late", Identity("shop", "late"), None)
        target.ips = ["10.218.0.2"]
        tap.attach(target)
        assert _until(lambda: tap.metrics.attach_failed >= 1)
        assert not tap.attached
        node.add_pod("late")  # the CNI finishes: the namespace appears
        assert _until(lambda: target.netns in tap.attached), tap.stats()
        assert tap.metrics.attach_retries >= 1 and not tap._retry
        tap.detach(target)
        assert _until(lambda: not tap.attached)


def test_a_detach_cancels_the_retry(tap: NodeTap) -> None:
    target = PodTarget("/run/netns/mw-never-there", Identity("shop", "gone"), None, ["10.0.0.9"])
    tap.attach(target)
    assert _until(lambda: target.netns in tap._retry)
    tap.detach(target)
    assert _until(lambda: not tap._retry)
    failed = tap.metrics.attach_failed
    time.sleep(1.5)  # past a retry's due time: none happens
    assert tap.metrics.attach_failed == failed and not tap.attached
