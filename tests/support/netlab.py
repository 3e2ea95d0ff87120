"""A network-threat lab for the node tap's integration tests: an attacker pod, a victim pod running
dnsmasq, and a NodeTap feeding a NetworkMonitor from one vantage point:

- `watch="pod"`: the victim's own `eth0` (a pod interface capture);
- `watch="bridge"`: the node's bridge `br0` (a host interface capture, promiscuous unless
  `promisc=False`), where frames forwarded between the two pods show only in promiscuous mode;
- `watch="both"`: the bridge and the victim's `eth0` (each packet must still be counted once).

Each test calls `lab.fresh()` for a new monitor, so one test's state cannot help another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from meshward.core.observation import Identity, Observation
from meshward.tap.node.netthreats import NetworkMonitor
from meshward.tap.node.packet import Packet
from meshward.tap.node.pipeline import NodeTap, PodTarget
from tests.support.netns import Node, Pod

DEADLINE = 5.0  # seconds from starting the tool to the alert
# a TXT record of five 250-byte strings: a ~1.3 KB answer (one unfragmented UDP datagram)
BIG_TXT = ",".join(c * 250 for c in "abcde")


class SwappableMonitor:
    """What NodeTap calls; forwards to the current monitor, which a test can replace."""

    def __init__(self) -> None:
        self.inner = NetworkMonitor()
        self.lock = threading.Lock()

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.inner.stats)

    def feed(self, pkt: Packet, where: str = "") -> list[Observation]:
        with self.lock:
            return self.inner.feed(pkt, where)

    def tick(self, now: float) -> list[Observation]:
        with self.lock:
            return self.inner.tick(now)


class Lab:
    """Two pods, dnsmasq in the victim, the node tap watching from `watch`."""

    def __init__(
        self, node: Node, attacker: Pod, victim: Pod, watch: str = "pod", promisc: bool = True
    ) -> None:
        self.node, self.attacker, self.victim = node, attacker, victim
        self.monitor = SwappableMonitor()
        self.alerts: list[Observation] = []
        self.arrived: dict[int, float] = {}  # id(alert) -> when the node tap handed it out
        self.stop = threading.Event()
        pods = []
        if watch in ("pod", "both"):
            pods.append(PodTarget(victim.netns, Identity("lab", "victim"), net_iface="eth0"))
        ifaces = [node.bridge] if watch in ("bridge", "both") else []
        self.tap = NodeTap(
            pods, ifaces, self._out, netmonitor=self.monitor, promisc=promisc, host_netns=node.netns
        )
        self.tap.open()
        self.thread = threading.Thread(target=self.tap.run, args=(self.stop,), daemon=True)
        self.thread.start()
        time.sleep(0.3)  # capture sockets are open before open() returns; let run() start

    def _out(self, obs: Observation) -> None:
        if obs.threats:
            self.arrived[id(obs)] = time.time()
            self.alerts.append(obs)

    def fresh(self, mode_of: Callable[[str], str] | None = None) -> float:
        """A new monitor and an empty alert list, once the tap has worked off what the last
        test sent (a loaded machine can leave a flood's backlog in the rings for seconds);
        returns the start time."""
        deadline = time.monotonic() + 10
        fed = -1
        while fed != self.monitor.inner.stats["packets"] and time.monotonic() < deadline:
            fed = self.monitor.inner.stats["packets"]
            time.sleep(0.3)
        with self.monitor.lock:
            self.monitor.inner = NetworkMonitor(resolve=self.tap.resolve, mode_of=mode_of)
            self.alerts.clear()
        return time.time()

    def wait_for(self, name: str, start: float, timeout: float = DEADLINE + 1) -> Observation:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for obs in list(self.alerts):
                # obs.time >= start: not a late summary of the monitor this test replaced
                if obs.threats[0].name == name and obs.time >= start:
                    return obs
            time.sleep(0.05)
        got = [(o.threats[0].name, o.threats[0].evidence) for o in self.alerts]
        raise AssertionError(f"no {name} within {timeout} s; alerts: {got}")

    def attack(self, cmd: list[str], timeout: float = 10) -> None:
        self.attacker.run(["timeout", str(timeout), *cmd], check=False, timeout=timeout + 5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.tap.close()


def start_dnsmasq(victim: Pod) -> None:
    """An authoritative-only dnsmasq in the victim pod: corp.test names and one big TXT."""
    victim.popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            f"--listen-address={victim.ip}",
            "--port=53",
            "--user=root",
            "--pid-file=",
            "--address=/corp.test/10.99.0.9",
            f"--txt-record=big.corp.test,{BIG_TXT}",
            "--edns-packet-max=4096",
            "--log-facility=/dev/null",
        ],
    )
    victim.wait_port(53)


@contextmanager
def lab_on(subnet: str, watch: str = "pod", promisc: bool = True) -> Iterator[Lab]:
    """A node with the attacker and victim pods, dnsmasq started, and a Lab watching."""
    with Node(subnet=subnet) as node:
        attacker = node.add_pod("attacker")
        victim = node.add_pod("victim")
        start_dnsmasq(victim)
        lab = Lab(node, attacker, victim, watch, promisc)  # Node's exit cleans up if this raises
        try:
            yield lab
        finally:
            lab.close()


def promiscuity(node: Node, iface: str) -> int:
    """The kernel's count of promiscuous users of an interface (`ip -d link`)."""
    out = node.run(["ip", "-d", "link", "show", iface]).stdout
    return int(out.split("promiscuity ", 1)[1].split()[0])
