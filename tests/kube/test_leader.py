"""Lease leader election against the real API server (short leases: the whole file runs ~15 s)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client

from meshward.kube import LeaderElector
from tests.support.apiserver import KubeCluster

pytestmark = pytest.mark.integration

LEASE, DEADLINE, RETRY = 3.0, 2.0, 0.3


def wait(cond: Callable[[], bool], timeout: float) -> float:
    """Seconds until `cond()` held; fails the test after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture
def electors(
    kube_cluster: KubeCluster, kube_namespace: str
) -> Iterator[Callable[[str], LeaderElector]]:
    made: list[LeaderElector] = []

    def make(identity: str) -> LeaderElector:
        e = LeaderElector(
            kube_cluster.api_client(),
            kube_namespace,
            "meshward-controller",
            identity,
            lease_duration=LEASE,
            renew_deadline=DEADLINE,
            retry_period=RETRY,
        )
        made.append(e)
        e.start()
        return e

    yield make
    for e in made:
        e.stop()


def _lease(cluster: KubeCluster, ns: str) -> client.V1Lease:
    return client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(
        "meshward-controller", ns
    )


def test_one_leader_and_fast_failover_on_release(
    kube_cluster: KubeCluster, kube_namespace: str, electors: Callable[[str], LeaderElector]
) -> None:
    a, b = electors("replica-a"), electors("replica-b")
    wait(lambda: a.is_leader or b.is_leader, 5)
    time.sleep(3 * RETRY)  # both keep running for the lease: still exactly one leader
    assert a.is_leader != b.is_leader
    leader, standby = (a, b) if a.is_leader else (b, a)
    lease = _lease(kube_cluster, kube_namespace)
    assert lease.spec.holder_identity == leader.identity
    assert lease.spec.lease_duration_seconds == int(LEASE)
    raw = json.loads(
        client.CoordinationV1Api(kube_cluster.api_client())
        .read_namespaced_lease("meshward-controller", kube_namespace, _preload_content=False)
        .data
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", raw["spec"]["renewTime"])
    transitions = lease.spec.lease_transitions

    leader.stop()  # releases the Lease
    took = wait(lambda: standby.is_leader, LEASE)
    assert took < 3 * RETRY + 1, took  # released: no need to wait for expiry
    lease = _lease(kube_cluster, kube_namespace)
    assert lease.spec.holder_identity == standby.identity
    assert lease.spec.lease_transitions == transitions + 1


def test_takeover_after_crash_within_lease_duration(
    kube_cluster: KubeCluster, electors: Callable[[str], LeaderElector]
) -> None:
    a = electors("replica-a")
    wait(lambda: a.is_leader, 5)
    b = electors("replica-b")
    time.sleep(2 * RETRY)
    assert not b.is_leader
    a.stop(release=False)  # a crash: the Lease stays held until it expires
    took = wait(lambda: b.is_leader, LEASE + 3 * RETRY + 1)
    assert took >= LEASE - 2 * RETRY - 0.5, f"took over an unexpired lease after {took:.1f} s"


def test_leader_steps_down_when_it_cannot_renew(
    kube_cluster: KubeCluster, electors: Callable[[str], LeaderElector]
) -> None:
    stopped: list[float] = []
    a = electors("replica-a")
    a.on_stopped_leading = lambda: stopped.append(time.monotonic())
    wait(lambda: a.is_leader, 5)
    t0 = time.monotonic()
    with kube_cluster.apiserver_down():
        wait(lambda: not a.is_leader, DEADLINE + 3 * RETRY + 2)
        assert stopped and stopped[0] - t0 <= DEADLINE + 3 * RETRY + 1
        assert a.last_error
    wait(lambda: a.is_leader, LEASE + 5)  # back as a candidate: it re-acquires its own lease
    assert a.transitions == 2
