"""`Mesh.ControlPlane.Access`: who opens TCP connections to the mesh's control plane, judged
from the SYNs the node tap sees (L4 only: sidecars speak mTLS to it, nothing above TCP can be
read, and nothing needs to be).

`ControlPlaneMonitor.feed` takes a decoded TCP SYN (no ACK) and answers the alerts it raises;
`tick` closes deduplication windows and forgets old SYNs. Who is who comes from the callers:

- `endpoint_of(ip, port)`: the control-plane component port that address is (its pods' IPs and
  its Services' cluster IPs, recognised by label; meshward.core.controlplane), else None;
- `client_of(ip)`: the pod of this node holding the address, with whether it carries a
  sidecar, else None (the connection is another node's to judge: each client pod runs on
  one node, so each connection is judged once in the cluster).

Rules, per new connection (a SYN seen twice, on a pod's interface and the bridge, or before
and after a Service's DNAT, counts once):

- `open-port`: a client without a sidecar on istiod's plaintext xDS (15010) or monitoring and
  debug port (15014), which answer anyone: every mode, unless the workload is listed in
  `open_port_clients` (a Prometheus that scrapes istiod, say);
- `new-client`: in monitor and enforce (the client namespace's mode), a client kind
  (workload, with or without a sidecar) never seen on that component port; learn mode
  learns it (bounded: `max_ports` component ports, `max_kinds` kinds each);
- `burst`: `burst_connections` new connections from one client to the control plane within
  `burst_window` seconds (defaults 50 in 10 s: a sidecar keeps one xDS stream and reconnects
  every 30 min or so; a restart storm of a whole Deployment on one node stays well below).

Alerts are deduplicated per rule, client workload and component port (`dedup_window`). A
connection that raises nothing is reported too, at most once per client kind and component
port per `report_interval` (an Observation without threats, protocol `tcp`, marked
`extra["control_plane"] = "connection"`): serve counts it on the graph's edge and learns
nothing from it (meshward.app.cpedges).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from meshward.core.controlplane import CONNECTION, REPORT_KEY, Endpoint
from meshward.core.observation import Identity, Observation, Threat
from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS
from meshward.tap.node.dedup import AlertDedup
from meshward.tap.node.netstate import Window
from meshward.tap.node.packet import Packet

SYN, ACK = 0x02, 0x10


@dataclass(frozen=True, slots=True)
class Client:
    """A connecting pod of this node: who, and whether a mesh sidecar runs beside it."""

    identity: Identity
    sidecar: bool
    key: str = field(init=False, compare=False)  # the workload, `namespace/workload`
    kind: str = field(init=False, compare=False)  # the workload, with or without a sidecar

    def __post_init__(self) -> None:  # computed once: judged on every connection
        key = self.identity.key
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "kind", f"{key} ({'sidecar' if self.sidecar else 'no sidecar'})")


@dataclass(slots=True)
class ControlPlaneConfig:
    """Thresholds and table sizes (defaults documented in docs/mesh-guard.md)."""

    dedup_window: float = 60.0
    burst_window: float = 10.0
    burst_connections: int = 50
    syn_memory: float = 5.0  # seconds a SYN is remembered (retransmits, second capture point)
    max_syns: int = 16384
    max_ports: int = 256  # component ports with a learned client list
    max_kinds: int = 1024  # client kinds learned per component port
    max_clients: int = 16384  # clients counted per burst window
    max_alert_keys: int = 4096
    report_interval: float = 60.0  # one connection report per client kind and port per this
    open_port_clients: tuple[str, ...] = ()  # ns/workload allowed on 15010/15014 sidecar-less


class ControlPlaneMonitor:
    """Learns which client kinds use each control-plane port; alerts on the rules above.
    Not thread-safe: fed by the packet loop only."""

    def __init__(
        self,
        endpoint_of: Callable[[str, int], Endpoint | None],
        client_of: Callable[[str], Client | None],
        mode_of: Callable[[str], str] | None = None,
        config: ControlPlaneConfig | None = None,
    ) -> None:
        self.config = c = config or ControlPlaneConfig()
        self.endpoint_of = endpoint_of
        self.client_of = client_of
        self.mode_of = mode_of or (lambda namespace: "learn")
        self.stats: Counter[str] = Counter()
        self._syns: OrderedDict[tuple[str, int, int], float] = OrderedDict()
        self._burst = Window(c.burst_window, c.max_clients, 1, self.stats)
        self._reported = Window(c.report_interval, c.max_clients, 1, self.stats)
        self._learned: dict[tuple[str, int], set[str]] = {}
        self._dedup = AlertDedup(c.dedup_window, c.max_alert_keys, self.stats)
        self._allowed = frozenset(c.open_port_clients)

    def feed(self, pkt: Packet, where: str = "") -> list[Observation]:
        """One TCP SYN: a new connection to the control plane is judged, others ignored."""
        if pkt.tcp_flags & (SYN | ACK) != SYN:
            return []
        endpoint = self.endpoint_of(pkt.dst, pkt.dport)
        if endpoint is None:
            return []
        key = (pkt.src, pkt.sport, pkt.tcp_seq)
        if key in self._syns:
            self.stats["cp_syn_repeats"] += 1
            return []
        if len(self._syns) >= self.config.max_syns:
            self._syns.popitem(last=False)
            self.stats["cp_syns_evicted"] += 1
        self._syns[key] = pkt.ts
        client = self.client_of(pkt.src)
        if client is None:
            self.stats["cp_not_ours"] += 1  # another node's pod, or no pod: judged elsewhere
            return []
        self.stats["cp_connections"] += 1
        out: list[Observation] = []
        self._burst.roll(pkt.ts)
        c = self.config
        n = self._burst.add(client.key)
        if n == c.burst_connections:
            self._alert(
                out,
                "burst",
                pkt,
                client,
                endpoint,
                f"{n} new connections from {client.key} to the control plane in "
                f"{c.burst_window:g} s (threshold {c.burst_connections})",
                where,
            )
        if endpoint.open_to_anyone and not client.sidecar and client.key not in self._allowed:
            self._alert(
                out,
                "open-port",
                pkt,
                client,
                endpoint,
                f"{client.key}, without a sidecar, connected to {endpoint.key} port "
                f"{endpoint.port} ({endpoint.purpose}), which answers without authentication",
                where,
            )
            return out
        mode = self.mode_of(client.identity.namespace)
        slot = (endpoint.key, endpoint.port)
        if mode == "learn":
            self._learn(slot, client.kind)
        elif mode in ("monitor", "enforce") and client.kind not in self._learned.get(slot, ()):
            self._alert(
                out,
                "new-client",
                pkt,
                client,
                endpoint,
                f"{client.kind} connected to {endpoint.key} port {endpoint.port} "
                f"({endpoint.purpose}): never seen there while learning",
                where,
                mode=mode,
            )
        if not out:
            self._report(out, pkt, client, endpoint)
        return out

    def tick(self, now: float) -> list[Observation]:
        """Forget old SYNs, roll the burst window, close due dedup windows."""
        syns, memory = self._syns, self.config.syn_memory
        while syns:
            first = next(iter(syns.values()))
            if now - first <= memory:
                break
            syns.popitem(last=False)
        self._burst.roll(now)
        self._reported.roll(now)
        return self._dedup.tick(now)

    def learned(self) -> dict[str, list[str]]:
        """component/workload:port -> the client kinds learned there."""
        return {f"{k}:{p}": sorted(v) for (k, p), v in self._learned.items()}

    def _learn(self, slot: tuple[str, int], kind: str) -> None:
        kinds = self._learned.get(slot)
        if kinds is None:
            if len(self._learned) >= self.config.max_ports:
                self.stats["untracked"] += 1
                return
            kinds = self._learned[slot] = set()
        if kind in kinds:
            return
        if len(kinds) < self.config.max_kinds:
            kinds.add(kind)
            self.stats["cp_kinds_learned"] += 1
        else:
            self.stats["untracked"] += 1

    def _report(
        self, out: list[Observation], pkt: Packet, client: Client, endpoint: Endpoint
    ) -> None:
        """A connection that raised nothing, for the graph (rate-limited per kind and port)."""
        self._reported.roll(pkt.ts)
        if not self._reported.fire_once((client.kind, endpoint.key, endpoint.port)):
            return
        self.stats["cp_reports"] += 1
        obs = self._observation(pkt, client, endpoint, [])
        obs.extra[REPORT_KEY] = CONNECTION
        out.append(obs)

    def _observation(
        self, pkt: Packet, client: Client, endpoint: Endpoint, threats: list[Threat]
    ) -> Observation:
        who = client.identity
        return Observation(
            seen_by="node-tap",
            source=Identity(who.namespace, who.workload, who.principal, pkt.src, pkt.sport),
            destination=Identity(endpoint.namespace, endpoint.workload, "", pkt.dst, pkt.dport),
            time=pkt.ts,
            protocol="tcp",
            threats=threats,
            extra={
                "mesh": endpoint.mesh,
                "component": endpoint.component,
                "component_port": str(endpoint.port),
                "purpose": endpoint.purpose,
                "client_sidecar": "true" if client.sidecar else "false",
            },
        )

    def _alert(
        self,
        out: list[Observation],
        rule: str,
        pkt: Packet,
        client: Client,
        endpoint: Endpoint,
        evidence: str,
        where: str,
        **extra: str,
    ) -> None:
        key = (rule, client.key, endpoint.key, endpoint.port)
        if self._dedup.repeat(key) is not None:
            return
        threat = Threat(MESH_CONTROL_PLANE_ACCESS, "network", evidence[:128])
        obs = self._observation(pkt, client, endpoint, [threat])
        obs.extra.update(rule=rule, where=where, **extra)
        self._dedup.report(key, obs, out)
