"""`Mesh.Sidecar.Bypass`: plaintext HTTP that reached an enforce-mode pod's application port
from another pod without passing the pod's proxy, so it never met meshward's check.

What the wire shows, on the pod's own `eth0` (where the node tap already captures):

- meshed pod-to-pod traffic is TLS: to the app port (the client proxy dials the original
  address; iptables in the pod hands it to the inbound proxy) or to the proxy's inbound port
  (Linkerd 4143, Istio 15006/15008): its first bytes are a TLS record, never a request line;
- a plaintext client (no sidecar) also arrives at the app port; where the pod's redirection
  works, the inbound proxy takes it, and the proxy then hands the request to the app over the
  pod's `lo`, where the node tap parses it (`proxied`);
- a bypass is a plaintext request head (`GET /x HTTP/1.1`, or the `PRI *` preface of HTTP/2
  without TLS) from another address arriving at a port that is not the proxy's, that the
  proxy never forwards: redirection excluded for the port (`config.linkerd.io/skip-inbound-
  ports`, `traffic.sidecar.istio.io/excludeInboundPorts`), missing (the init container or CNI
  failed) or not there at all (a caller dialing the pod IP of a pod whose proxy listens only
  on its own port, as the test pods here).

So a request head seen on `eth0` is held for `confirm_window` seconds; if the proxy did not hand
the same request (method and path; any request for HTTP/2) to the app on `lo` by then, and the
app answered it, it is a bypass. The answer is the first segment back on that connection (an
HTTP/1 status line, or the server's HTTP/2 SETTINGS frame or its ACK): without it the request
reached no app (a STRICT Istio sidecar closes a plaintext connection unanswered; a refused port
resets it), and an answer the proxy made itself (`server: istio-envoy`, which Istio's sidecars write
on every response, or linkerd-proxy's `l5d-proxy-error`) means the proxy took the request and
refused it (ext_authz or the mesh's policy denied it): neither is a bypass. A head waits at
most `answer_window` seconds for its answer. The kernel filter passes only segments starting
with an HTTP method, a status line or a SETTINGS frame (capture.py), so TLS and bulk data never
reach Python. One judgement per connection (its first request).

The proxy's copy: linkerd-proxy forwards to the app on the pod IP over `lo`; Istio's inbound
listener (REDIRECT interception: istio-iptables' PREROUTING -> ISTIO_INBOUND ->
ISTIO_IN_REDIRECT -> 15006) forwards to the original address, the pod IP, from 127.0.0.6
(`InboundPassthroughBindIpv4`), over `lo` too. Either way the copy's server end is the pod IP
and the app port, which is what a head is matched with.

Limits: only pods the node tap watches (their `eth0` and `lo`), in enforce mode; a proxied
request whose response takes longer than `confirm_window` (the proxy's copy is reported when
its response ends) is reported as a bypass when the proxy passes the app's answer on unmarked
(linkerd-proxy); an HTTP/2 answer cannot be told from the proxy's (its headers are compressed),
so an h2c request the proxy itself refuses is reported; plaintext that is not HTTP (a raw TCP
protocol) is not recognised; a client splitting its first four bytes over segments evades the kernel
filter (it is stateless); an app that listens on `lo` only cannot be bypassed this way at all.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

from meshward.core.observation import Identity, Observation, Threat
from meshward.core.threats.names import MESH_SIDECAR_BYPASS
from meshward.core.wire import ISTIO_PROXY_PORTS
from meshward.tap.node.dedup import AlertDedup
from meshward.tap.node.packet import Packet

H2_PREFACE = b"PRI * HTTP/2.0"
# in the head of an answer the proxy made itself: Istio's sidecars name themselves on every
# response (HCM server_name "istio-envoy", OVERWRITE); linkerd-proxy marks its own errors
PROXY_ANSWER_MARKS = (b"\nserver: istio-envoy\r", b"\nl5d-proxy-error:")

Conn = tuple[str, int, str, int]


@dataclass(slots=True)
class BypassConfig:
    confirm_window: float = 5.0  # seconds for the proxy's copy to show on lo
    dedup_window: float = 60.0
    answer_window: float = 15.0  # seconds a head not answered yet waits for its answer
    max_pending: int = 4096  # request heads waiting for the proxy's copy or an answer
    max_connections: int = 16384  # connections judged, remembered so a keep-alive counts once
    connection_memory: float = 300.0
    max_proxied: int = 256  # proxied requests remembered per pod
    max_alert_keys: int = 4096
    modes: tuple[str, ...] = ("enforce",)


@dataclass(slots=True)
class _Pending:
    ts: float
    pod: Identity
    client: str
    sport: int
    port: int
    method: str
    path: str
    where: str
    answer: str = ""  # "", or the app's status ("200"; "h2" for HTTP/2), or "proxy"
    looked: bool = False  # for the proxy's copy, once the confirm window passed


def _is_answer(payload: memoryview | bytes) -> bool:
    """A status line, or an HTTP/2 SETTINGS frame (type 4, flags none or ACK) on stream 0: how
    a server's bytes on a plaintext connection start. An HTTP/2 server may send its SETTINGS
    before the client's preface arrives (gRPC's does); its ACK of the client's SETTINGS then
    follows the preface, and is the answer."""
    if payload[:5] == b"HTTP/":
        return True
    return (
        len(payload) >= 9
        and payload[:2] == b"\0\0"
        and payload[3] == 4
        and payload[4] in (0, 1)
        and payload[5:9] == b"\0\0\0\0"
    )


def _is_headers_frame(head: bytes) -> bool:
    """An HTTP/2 HEADERS frame header (type 1) on a client stream (odd, not 0)."""
    if len(head) < 9 or head[3] != 1:
        return False
    stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    return stream % 2 == 1


def request_line(payload: bytes) -> tuple[str, str] | None:
    """(method, target) of a plaintext HTTP request head, ("PRI", "*") for the HTTP/2
    preface; None for anything else (TLS, binary). A request line longer than the segment
    (a long URL) gives the target as far as it goes, ending in "..." (matched as a prefix)."""
    if payload.startswith(H2_PREFACE):
        return "PRI", "*"
    line, crlf, _ = payload.partition(b"\r\n")
    parts = line.split(b" ")
    method, target = parts[0], parts[1] if len(parts) > 1 else b""
    if not method.isalpha() or not method.isupper() or not target:
        return None
    if crlf:
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return None
    elif len(parts) != 2 or len(payload) < 64:
        return None  # not a cut request line: a short odd segment
    else:
        return method.decode("ascii"), target.decode("latin-1") + "..."
    return method.decode("ascii"), target.decode("latin-1")


class BypassMonitor:
    """Request heads seen on watched pods' `eth0`, confirmed or cleared by their proxy's copy
    on `lo`. Not thread-safe: fed by the packet loop only."""

    def __init__(
        self,
        pod_of: Callable[[str], Identity | None],
        mode_of: Callable[[str], str] | None = None,
        proxy_ports: Collection[int] = (),
        config: BypassConfig | None = None,
    ) -> None:
        self.config = c = config or BypassConfig()
        self.pod_of = pod_of
        self.mode_of = mode_of or (lambda namespace: "learn")
        # the proxies' own ports on a pod: arriving there is passing the proxy
        self.proxy_ports = frozenset(proxy_ports) | ISTIO_PROXY_PORTS
        self.stats: Counter[str] = Counter()
        self._pending: dict[Conn, _Pending] = {}
        self._seen: OrderedDict[Conn, float] = OrderedDict()
        self._proxied: dict[str, deque[tuple[float, str, str]]] = {}
        self._dedup = AlertDedup(c.dedup_window, c.max_alert_keys, self.stats)

    def feed(self, pkt: Packet, where: str = "") -> None:
        """A TCP segment starting with an HTTP method, a status line or an HTTP/2 SETTINGS
        frame, seen on a pod's interface."""
        if pkt.src == pkt.dst:
            return
        if _is_answer(pkt.payload):
            self._answered(pkt)
            return
        if pkt.dport in self.proxy_ports:
            return
        pod = self.pod_of(pkt.dst)
        if pod is None or self.pod_of(pkt.src) == pod:
            return  # not to a watched pod, or the pod to itself
        conn = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if conn in self._seen:
            self._seen.move_to_end(conn)
            self._seen[conn] = pkt.ts
            return
        if self.mode_of(pod.namespace) not in self.config.modes:
            return
        head = request_line(bytes(pkt.payload[:2048]))
        if head is None:
            self.stats["bypass_not_http"] += 1
            return
        c = self.config
        if len(self._seen) >= c.max_connections:
            self._seen.popitem(last=False)
            self.stats["untracked"] += 1
        self._seen[conn] = pkt.ts
        if len(self._pending) >= c.max_pending:
            self.stats["untracked"] += 1
            return
        self.stats["bypass_candidates"] += 1
        method, path = head
        self._pending[conn] = _Pending(
            pkt.ts, pod, pkt.src, pkt.sport, pkt.dport, method, path, where
        )

    def _answered(self, pkt: Packet) -> None:
        """The first segment back on a pending head's connection: who answered it."""
        p = self._pending.get((pkt.dst, pkt.dport, pkt.src, pkt.sport))
        if p is None or p.answer:
            return  # not a pending head's connection, or its answer was seen already
        head = bytes(pkt.payload[:2048])
        if not head.startswith(b"HTTP/"):
            p.answer = "h2"  # the server's SETTINGS: the app's or the proxy's, cannot tell
            return
        fields = head.partition(b"\r\n\r\n")[0].lower() + b"\r"
        if any(mark in fields for mark in PROXY_ANSWER_MARKS):
            p.answer = "proxy"
        else:
            status = head[9:12]
            p.answer = status.decode("ascii") if status.isdigit() else "?"

    def proxy_hop(self, pkt: Packet) -> None:
        """A segment that starts a request the proxy hands the app on the pod's `lo` (an Istio
        pod's hop from 127.0.0.6: capture.proxy_hop_filter): a request line, HTTP/2's preface
        or a HEADERS frame. Seen when the request is forwarded, not when it is answered."""
        head = bytes(pkt.payload[:2048])
        line = request_line(head)
        if line is not None:
            method, path = line
            h2 = method == "PRI"
            self.proxied(pkt.dst, method, path.removesuffix("..."), "h2" if h2 else "", pkt.ts)
        elif _is_headers_frame(head):
            self.proxied(pkt.dst, "PRI", "*", "h2", pkt.ts)
        else:
            self.stats["hop_not_a_request"] += 1  # a body segment whose fourth byte is 1

    def proxied(self, pod: str, method: str, path: str, protocol: str, ts: float) -> None:
        """A request the pod's proxy handed to its app on `lo` (`pod`: its IP)."""
        seen = self._proxied.get(pod)
        if seen is None:
            seen = self._proxied[pod] = deque(maxlen=self.config.max_proxied)
        h2 = protocol in ("h2", "grpc")
        seen.append((ts, "PRI" if h2 else method, path.split("?", 1)[0]))

    def forget_pod(self, ip: str) -> None:
        self._proxied.pop(ip, None)

    def tick(self, now: float, resolve: Callable[[str], Identity]) -> list[Observation]:
        """Judge heads older than the confirm window; close due dedup windows."""
        c = self.config
        out: list[Observation] = []
        for conn, p in list(self._pending.items()):
            age = now - p.ts
            if age < c.confirm_window:
                continue
            # looked at once past the proxy's window, then again once answered (or never):
            # a flood of unanswered heads costs one look each, not one per tick
            waiting = not p.answer and age < c.answer_window
            if waiting and p.looked:
                continue
            p.looked = True
            if self._was_proxied(conn[2], p):
                self.stats["bypass_proxied"] += 1
            elif waiting:
                continue
            elif p.answer == "proxy":
                self.stats["bypass_refused"] += 1  # the proxy took it and answered itself
            elif p.answer:
                self._alert(out, p, conn[2], resolve(p.client))
            else:
                self.stats["bypass_unanswered"] += 1  # it reached no app
            del self._pending[conn]
        seen = self._seen
        while seen and now - next(iter(seen.values())) > c.connection_memory:
            seen.popitem(last=False)
        for ip, entries in list(self._proxied.items()):
            while entries and now - entries[0][0] > 2 * c.confirm_window:
                entries.popleft()
            if not entries:
                del self._proxied[ip]
        out += self._dedup.tick(now)
        return out

    def _was_proxied(self, pod_ip: str, p: _Pending) -> bool:
        for ts, method, path in self._proxied.get(pod_ip, ()):
            if ts < p.ts - 1.0:
                continue
            if p.method == "PRI" and method == "PRI":
                return True
            if method != p.method:
                continue
            if p.path.endswith("..."):  # a cut request line: its target as far as it went
                cut = p.path[:-3]
                if (path + "?").startswith(cut.split("?", 1)[0]) or cut.startswith(path):
                    return True
            elif path == p.path.split("?", 1)[0]:
                return True
        return False

    def _alert(self, out: list[Observation], p: _Pending, pod_ip: str, client: Identity) -> None:
        key = (client.key, p.pod.key, p.port)
        if self._dedup.repeat(key) is not None:
            return
        h2 = p.method == "PRI"
        path, _, query = p.path.partition("?")
        evidence = (
            f"{'h2c' if h2 else 'plaintext HTTP/1'} from {client.key} reached {p.pod.key} "
            f"port {p.port} around its proxy"
        )
        obs = Observation(
            seen_by="node-tap",
            source=Identity(client.namespace, client.workload, "", p.client, p.sport),
            destination=Identity(p.pod.namespace, p.pod.workload, p.pod.principal, pod_ip, p.port),
            time=p.ts,
            protocol="h2" if h2 else "http/1.1",
            method="" if h2 else p.method,
            path=path if not h2 else "/",
            query=query,
            threats=[Threat(MESH_SIDECAR_BYPASS, "network", evidence[:128])],
            extra={
                "rule": "plaintext-direct",
                "where": p.where,
                "answered": p.answer,
                "confirm_window_s": f"{self.config.confirm_window:g}",
            },
        )
        self._dedup.report(key, obs, out)
