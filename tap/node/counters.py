"""The node tap's counters: one plain object, bumped from the capture thread, read by reporters."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(slots=True)
class NodeTapCounters:
    """What the node tap counted since start (`meshward_nodetap_*` on its /metrics)."""

    packets: int = 0  # packets that reached Python (after the kernel filters)
    bytes: int = 0  # their wire bytes
    undecodable: int = 0  # frames packet.decode rejected
    flows: int = 0  # TCP connections tracked since start
    flows_active: int = 0
    flows_evicted: int = 0  # table full: a data-less connection evicted, or a new one refused
    flows_expired: int = 0  # idle past the timeout
    midstream: int = 0  # connections joined without their SYN (unparseable or resynced)
    midstream_skipped: int = 0  # segments of unknown connections not starting a message
    gaps: int = 0  # holes in a byte stream (bytes the capture never saw)
    transactions: int = 0  # request/response exchanges turned into observations
    unanswered: int = 0  # requests emitted without a response (connection ended, overflow)
    parse_errors: int = 0  # malformed or unparseable HTTP/1.1 or HTTP/2 data
    upgraded: int = 0  # connections that switched protocol (Upgrade, CONNECT): not parsed
    net_packets: int = 0  # ICMP/UDP/fragments handed to the network monitor
    net_seen_by_pod: int = 0  # host-interface packets left to a pod interface's capture
    alerts: int = 0  # network alerts from the network monitor
    guard_syns: int = 0  # TCP SYNs handed to the control-plane watch (mesh guard)
    guard_heads: int = 0  # plaintext request heads on pod interfaces (bypass watch)
    proxy_hops: int = 0  # Istio pods' requests their proxy handed the app (lo, bypass watch)
    kernel_packets: int = 0  # PACKET_STATISTICS: seen by the kernel sockets
    kernel_drops: int = 0  # PACKET_STATISTICS: dropped because the socket buffer was full
    out_queued: int = 0  # observations handed to the output
    out_dropped: int = 0  # observations the output queue had no room for
    out_sent: int = 0  # observations written or accepted by the server
    pods_attached: int = 0  # pods whose captures opened (discovery)
    pods_detached: int = 0  # pods whose captures closed again
    attach_failed: int = 0  # attach attempts that failed (each is retried with backoff)
    attach_retries: int = 0  # attach attempts after a failure

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
