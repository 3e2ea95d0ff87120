"""The node tap's packet loop: capture sockets -> decode -> TCP flows / network monitor -> output.

One thread reads every capture socket (epoll), so the flow table and the parsers need no locks.
The loop is kept lean on purpose (Python's per-packet cost is the limit): packets come in
blocks from a kernel ring (no system call per packet), then one decode and one dict lookup per
TCP packet; everything else (expiry, kernel counters, network-monitor windows) runs once a
second.
"""

from __future__ import annotations

import logging
import queue
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshward.core.log import event
from meshward.core.observation import Identity, Observation
from meshward.core.wire import ISTIO_INBOUND_BIND, LINKERD_PROXY_PORTS, linkerd_client_identity
from meshward.tap.node.bypass import BypassMonitor
from meshward.tap.node.capture import (
    Capture,
    Insn,
    in_netns,
    netthreat_filter,
    proxy_hop_filter,
    tcp_filter,
)
from meshward.tap.node.controlplane import ControlPlaneMonitor
from meshward.tap.node.counters import NodeTapCounters
from meshward.tap.node.flows import Connection, FlowTable
from meshward.tap.node.packet import TCP, Packet, decode
from meshward.tap.node.peerfile import PeerFile

log = logging.getLogger("meshward.node-tap")
HOP_RING_MB = 2  # an Istio pod's lo hop capture: the first segment of each request only


@dataclass
class PodTarget:
    """One pod network namespace to watch, and who the pod is (the destination identity).

    `mesh`: whose proxy the pod runs. A Linkerd pod's `lo` is where meshward reads its traffic
    (every proxy<->app request becomes an observation). An Istio pod's sidecar already reports
    each request through ext_authz, so its `lo` is read only for the bypass watch: just the
    first segment of each request the proxy hands the app from 127.0.0.6, which clears the
    heads it matches (capture.proxy_hop_filter)."""

    netns: str  # name under /run/netns or a path such as /proc/PID/ns/net
    pod: Identity = field(default_factory=Identity)
    net_iface: str | None = "eth0"  # pod interface watched for ICMP/UDP (None: not watched)
    ips: list[str] = field(default_factory=list)  # filled from the namespace at open()
    mesh: str = "linkerd"  # linkerd | istio


def namespace_addresses(netns: str | None) -> list[str]:
    """The non-loopback addresses inside a namespace (pyroute2 netlink, from a setns thread)."""

    def read() -> list[str]:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr()]
        return [a for a in addrs if a and not a.startswith(("127.", "::1", "fe80:"))]

    return in_netns(netns, read)


class NodeTap:
    """Captures, flow table, network monitor and output, driven by `run()`."""

    def __init__(
        self,
        pods: list[PodTarget],
        ifaces: list[str],
        out: Callable[[Observation], None],
        metrics: NodeTapCounters | None = None,
        app_ports: list[int] | None = None,
        max_body: int = 65536,
        max_flows: int = 20000,
        idle_timeout: float = 120.0,
        stats_interval: float = 10.0,
        netmonitor: Any = None,
        ring_mb: int = 8,
        promisc: bool = True,
        host_netns: str | None = None,
        peer_file: PeerFile | None = None,
        cpmon: ControlPlaneMonitor | None = None,
        bypass: BypassMonitor | None = None,
    ) -> None:
        self.pods = pods
        # host interfaces in promiscuous mode: on a bridge, the frames it forwards pod to pod
        self.promisc = promisc
        self.host_netns = host_netns  # where the host interfaces are (None: this namespace)
        self.peer_file = peer_file  # the UDP peer baseline kept across restarts
        self.ring_mb = ring_mb  # kernel ring per capture socket (pinned kernel memory; two per pod)
        self.ifaces = ifaces
        self.out = out
        self.metrics = metrics or NodeTapCounters()
        self.app_ports = app_ports
        self.stats_interval = stats_interval
        self.flows = FlowTable(
            self._observed, self.metrics, max_flows, idle_timeout, max_body=max_body
        )
        self.captures: list[Capture] = []
        self.tcp_where: dict[str, PodTarget] = {}
        self.hop_where: set[str] = set()  # Istio pods' lo: the proxy's hop (bypass watch)
        self.netmon = netmonitor
        # the mesh guard: TCP SYNs to the control plane, plaintext heads around a pod's proxy
        self.cpmon = cpmon
        self.bypass = bypass
        self.by_ip: dict[str, Identity] = {}
        self.net_pod_ips: dict[str, frozenset[str]] = {}  # pod eth0 capture -> its IPs
        # every IP some pod interface capture watches (kept in place: handlers hold this set)
        self.net_watched: set[str] = set()
        self.host_where: set[str] = set()  # the host-interface captures
        self.attached: dict[str, list[Capture]] = {}  # pod netns -> its captures
        # attach/detach asked from other threads (pod discovery), done by the packet loop,
        # which alone touches captures, flows and parsers
        self._requests: queue.SimpleQueue[tuple[str, PodTarget]] = queue.SimpleQueue()
        # attaches that failed, retried with backoff: netns -> (pod, when, next delay)
        self._retry: dict[str, tuple[PodTarget, float, float]] = {}
        # netns -> attach attempts failed since its last success (read by discovery, which
        # looks the pod's namespace up again: a restarted sandbox has a new one)
        self.failing: dict[str, int] = {}
        self.retry_base, self.retry_max = 2.0, 30.0
        self._epoll: select.epoll | None = None
        self._caps: dict[int, tuple[Capture, Callable[[bytes, float], None]]] = {}

    # --- setup -------------------------------------------------------------------------
    def open(self) -> None:
        """Open every capture socket (raises OSError with the namespace/interface named)."""
        if self.peer_file is not None and self.netmon is not None:
            self.netmon.load_baseline(self.peer_file.load())
            self.peer_file.saved_changes = self.netmon.baseline_changes
        try:
            for pod in self.pods:
                self._attach(pod)
            for iface in self.ifaces:
                prog = netthreat_filter(syn=self.cpmon is not None)
                cap = self._capture(iface, prog, self.host_netns, self.promisc)
                self.host_where.add(cap.where)
        except BaseException:
            self.close()
            raise

    def _attach(self, pod: PodTarget) -> None:
        """Open a pod's captures: proxy<->app TCP on its lo, ICMP/UDP on its interface."""
        if pod.netns in self.attached:
            return
        pod.ips = pod.ips or namespace_addresses(pod.netns)
        opened: list[Capture] = []
        try:
            if pod.mesh == "istio":  # its lo is the bypass watch's: the proxy's hop only
                if self.bypass is not None:  # one small packet per request: a small ring
                    prog = proxy_hop_filter(ISTIO_INBOUND_BIND)
                    cap = self._capture("lo", prog, pod.netns, ring_mb=HOP_RING_MB)
                    opened.append(cap)
                    self.hop_where.add(cap.where)
            else:
                ports = self.app_ports or sorted(LINKERD_PROXY_PORTS)
                prog = tcp_filter(ports, include=bool(self.app_ports), drop_outgoing=True)
                cap = self._capture("lo", prog, pod.netns)
                opened.append(cap)
                self.tcp_where[cap.where] = pod
            if pod.net_iface and self._watch_net:
                try:
                    prog = netthreat_filter(self.cpmon is not None, self.bypass is not None)
                    net = self._capture(pod.net_iface, prog, pod.netns)
                    opened.append(net)
                    self.net_pod_ips[net.where] = frozenset(pod.ips)
                    self._net_watched_changed()
                except OSError as exc:  # a pod without that interface: TCP still works
                    event(
                        log,
                        "pod interface not watched",
                        logging.WARNING,
                        netns=pod.netns,
                        iface=pod.net_iface,
                        error=str(exc),
                    )
        except BaseException:
            for c in opened:
                self._forget(c)
            raise
        for ip in pod.ips:
            self.by_ip[ip] = Identity(pod.pod.namespace, pod.pod.workload, pod.pod.principal, ip)
        self.attached[pod.netns] = opened
        self.metrics.pods_attached += 1

    def _detach(self, pod: PodTarget) -> None:
        """Close a pod's captures and connections: sockets and memory return to what they
        were before it came."""
        if pod.netns not in self.attached:
            return
        for cap in self.attached.pop(pod.netns, []):
            self.flows.close_all(cap.where)
            self._forget(cap)
        for ip in pod.ips:
            self.by_ip.pop(ip, None)
            if self.bypass is not None:
                self.bypass.forget_pod(ip)
        self.metrics.pods_detached += 1
        event(log, "detached", netns=pod.netns, pod=pod.pod.key)

    @property
    def _watch_net(self) -> bool:
        """Whether pods' interfaces are captured (network threats or the mesh guard)."""
        return self.netmon is not None or self.cpmon is not None or self.bypass is not None

    def _net_watched_changed(self) -> None:
        self.net_watched.clear()
        for ips in self.net_pod_ips.values():
            self.net_watched.update(ips)

    def _forget(self, cap: Capture) -> None:
        self.tcp_where.pop(cap.where, None)
        self.hop_where.discard(cap.where)
        if self.net_pod_ips.pop(cap.where, None) is not None:
            self._net_watched_changed()
        entry = self._caps.pop(cap.fileno(), None)
        if entry is not None and self._epoll is not None:
            self._epoll.unregister(cap.fileno())
        if cap in self.captures:
            self.captures.remove(cap)
        cap.close()

    def attach(self, pod: PodTarget) -> None:
        """Watch a pod from now on (any thread; done by the packet loop within 0.2 s)."""
        self._requests.put(("attach", pod))

    def detach(self, pod: PodTarget) -> None:
        """Stop watching a pod (any thread; done by the packet loop within 0.2 s)."""
        self._requests.put(("detach", pod))

    def _serve_requests(self) -> None:
        while True:
            try:
                what, pod = self._requests.get_nowait()
            except queue.Empty:
                return
            if what == "attach":
                self._try_attach(pod, self.retry_base)
            else:
                self._retry.pop(pod.netns, None)
                self.failing.pop(pod.netns, None)
                try:
                    self._detach(pod)
                except OSError as exc:
                    event(log, "detach failed", logging.WARNING, netns=pod.netns, error=str(exc))

    def _try_attach(self, pod: PodTarget, delay: float) -> None:
        """Attach; on failure retry with backoff (discovery decided the pod is to be watched,
        and a namespace that is briefly unreadable must not leave it unwatched) until it
        attaches or a detach for it arrives."""
        try:
            self._attach(pod)
        except OSError as exc:
            self.metrics.attach_failed += 1
            self._retry[pod.netns] = (pod, time.monotonic() + delay, delay)
            self.failing[pod.netns] = self.failing.get(pod.netns, 0) + 1
            event(
                log,
                "attach failed",
                logging.WARNING,
                netns=pod.netns,
                error=str(exc),
                retry_in=round(delay, 1),
            )
            return
        self._retry.pop(pod.netns, None)
        self.failing.pop(pod.netns, None)
        for cap in self.attached.get(pod.netns, []):
            self._register(cap)

    def _retry_due(self, mono: float) -> None:
        for pod, due, delay in list(self._retry.values()):
            if mono >= due:
                self.metrics.attach_retries += 1
                self._try_attach(pod, min(delay * 2, self.retry_max))

    def _register(self, cap: Capture) -> None:
        if cap.fileno() in self._caps:
            return
        self._caps[cap.fileno()] = (cap, self._handler(cap))
        if self._epoll is not None:
            self._epoll.register(cap.fileno(), select.EPOLLIN)

    def _capture(
        self,
        iface: str,
        prog: list[Insn | str],
        netns: str | None,
        promisc: bool = False,
        ring_mb: int | None = None,
    ) -> Capture:
        try:
            blocks = min(ring_mb or self.ring_mb, self.ring_mb)
            cap = Capture(iface, prog, netns, blocks=blocks, promisc=promisc)
        except OSError as exc:
            where = f"{netns}:{iface}" if netns else iface
            raise OSError(exc.errno, f"cannot capture on {where}: {exc.strerror or exc}") from exc
        self.captures.append(cap)
        event(log, "capturing", where=cap.where)
        return cap

    def resolve(self, ip: str) -> Identity:
        """IP -> the pod identity we know (for the network monitor's alerts)."""
        known = self.by_ip.get(ip)
        if known is None:
            return Identity(ip=ip)
        return Identity(known.namespace, known.workload, known.principal, ip)

    # --- observations ------------------------------------------------------------------
    def _observed(self, obs: Observation, conn: Connection) -> None:
        pod = self.tcp_where.get(conn.where)
        pid = pod.pod if pod else Identity()
        obs.destination = Identity(pid.namespace, pid.workload, pid.principal, *conn.server)
        obs.source = Identity.parse(linkerd_client_identity(obs.headers))
        obs.extra["tcp"] = f"{conn.client[0]}:{conn.client[1]}->{conn.server[0]}:{conn.server[1]}"
        obs.extra["netns"] = pod.netns if pod else conn.where
        if conn.midstream:
            obs.extra["midstream"] = "1"
        if self.bypass is not None:  # the proxy handed this request to the app: not a bypass
            self.bypass.proxied(conn.server[0], obs.method, obs.path, obs.protocol, obs.time)
        self.out(obs)

    def _guard(self, pkt: Packet, where: str) -> None:
        """A TCP segment a pod or host interface passed: a SYN (control-plane watch) or a
        plaintext request head (bypass watch; capture.netthreat_filter)."""
        if pkt.tcp_flags & 0x12 == 0x02:
            if self.cpmon is not None:
                self.metrics.guard_syns += 1
                self._alerts(self.cpmon.feed(pkt, where))
        elif self.bypass is not None and pkt.payload:
            self.metrics.guard_heads += 1
            self.bypass.feed(pkt, where)

    def _alerts(self, found: list[Observation] | None) -> None:
        if found:
            self.metrics.alerts += len(found)
            for obs in found:
                self.out(obs)

    # --- the loop ----------------------------------------------------------------------
    def _handler(self, cap: Capture) -> Callable[[bytes, float], None]:
        """The per-packet function of one capture: decode, then flows or the net monitor."""
        m = self.metrics
        flows_packet = self.flows.packet
        netmon = self.netmon
        alerts = self._alerts
        where = cap.where
        tcp = where in self.tcp_where
        hop = where in self.hop_where
        bypass = self.bypass
        # Each packet feeds the monitor once. A pod interface capture sees its pod's packets
        # both ways; between two watched pods only the receiver's feeds it. A host capture
        # (a bridge sees pod-to-pod frames) leaves to the pods' captures what they see.
        own = self.net_pod_ips.get(where, frozenset())
        host = where in self.host_where
        watched = self.net_watched
        guard = self._guard

        def handle(frame: bytes, ts: float) -> None:
            m.packets += 1
            m.bytes += len(frame)
            pkt = decode(frame, ts)
            if pkt is None:
                m.undecodable += 1
            elif tcp and pkt.proto == TCP:
                flows_packet(pkt, where)
            elif hop:
                if bypass is not None and pkt.proto == TCP:
                    m.proxy_hops += 1
                    bypass.proxy_hop(pkt)
            elif pkt.proto == TCP and pkt.dport != 53 and pkt.sport != 53:
                guard(pkt, where)
            elif netmon is not None:
                if host:
                    if pkt.src in watched or pkt.dst in watched:
                        m.net_seen_by_pod += 1
                        return
                elif pkt.src in own and pkt.dst in watched:
                    return
                m.net_packets += 1
                alerts(netmon.feed(pkt, where))

        return handle

    def run(self, stop: threading.Event, duration: float | None = None) -> None:
        """Read packets until `stop` is set (or `duration` seconds passed), then flush."""
        ep = self._epoll = select.epoll()
        for cap in self.captures:
            self._register(cap)
        caps = self._caps
        end = time.monotonic() + duration if duration else None
        next_tick = time.monotonic() + 1.0
        next_stats = time.monotonic() + self.stats_interval
        try:
            while not stop.is_set():
                if not self._requests.empty():
                    self._serve_requests()
                for fd, _ in ep.poll(0.2):
                    entry = caps.get(fd)
                    if entry is not None:
                        entry[0].drain(entry[1])
                mono = time.monotonic()
                if mono >= next_tick:
                    next_tick = mono + 1.0
                    for cap, handle in list(caps.values()):  # blocks retired by timeout only
                        cap.drain(handle)
                    if self._retry:
                        self._retry_due(mono)
                    self.tick(time.time())
                    if mono >= next_stats:
                        next_stats = mono + self.stats_interval
                        self.log_stats()
                if end is not None and mono >= end:
                    break
        finally:
            self._epoll = None
            ep.close()
            self._caps.clear()
            self.flows.close_all()
            self.tick(time.time())
            if self.peer_file is not None and self.netmon is not None:
                self.peer_file.save(self.netmon)

    def tick(self, now: float) -> None:
        """Once a second: expire flows, read kernel counters, let the monitor close windows."""
        self.flows.expire(now)
        packets = drops = 0
        for cap in self.captures:
            try:
                p, d = cap.read_stats()
            except OSError:
                continue
            packets += p
            drops += d
        self.metrics.kernel_packets, self.metrics.kernel_drops = packets, drops
        if self.netmon is not None:
            self._alerts(self.netmon.tick(now))
            if self.peer_file is not None:
                self.peer_file.maybe_save(self.netmon)
        if self.cpmon is not None:
            self._alerts(self.cpmon.tick(now))
        if self.bypass is not None:
            self._alerts(self.bypass.tick(now, self.resolve))

    def stats(self) -> dict[str, int]:
        out = self.metrics.as_dict()
        if self.netmon is not None:
            for k, v in (getattr(self.netmon, "stats", None) or {}).items():
                out[f"net_{k}"] = v
        for prefix, mon in (("cp", self.cpmon), ("bypass", self.bypass)):
            if mon is not None:
                for k, v in mon.stats.items():
                    out[f"{prefix}_{k}" if not k.startswith(prefix) else k] = v
        return out

    def log_stats(self) -> None:
        event(log, "node-tap stats", **self.stats())

    def close(self) -> None:
        for cap in self.captures:
            cap.close()
        self.captures.clear()
