"""`meshward node-tap`: capture pod loopback HTTP and host ICMP/UDP, emit observations.

One per node, as root. Each `--netns` is a pod network namespace (Linkerd-meshed pod): its `lo`
is captured for the plaintext proxy↔app HTTP/1.1, HTTP/2 and gRPC; each `--iface` is a host
interface watched for ICMP/UDP threats. Observations (and network alerts, which are
observations carrying threats) go to stdout as JSON Lines or in batches to `meshward serve`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from meshward.app.commands import UsageError
from meshward.core.modes import MODES
from meshward.core.names import is_kubernetes_subdomain


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "node-tap",
        help="capture Linkerd pods' loopback HTTP/gRPC and host ICMP/UDP (root)",
        description="AF_PACKET capture in pod network namespaces (lo: proxy<->app HTTP/1.1, "
        "HTTP/2, gRPC) and on host interfaces (ICMP/UDP threats). Needs root.",
    )
    p.add_argument(
        "--netns",
        action="append",
        default=[],
        metavar="NAME|PATH",
        help="pod network namespace (name under /run/netns or a path such as "
        "/proc/PID/ns/net); repeatable",
    )
    p.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME", ""),
        help="find this node's Linkerd-meshed pods (and, for the bypass watch, its Istio pods) "
        "through the Kubernetes API and capture them (default $NODE_NAME, from the downward "
        "API; --netns is for hand use)",
    )
    p.add_argument(
        "--kubeconfig",
        help="kubeconfig file for --node (default: in-cluster configuration)",
    )
    p.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="the mesh's identity trust domain, for pods' identities with --node "
        "(Linkerd: <sa>.<ns>.serviceaccount.identity.linkerd.DOMAIN; Istio: "
        "spiffe://DOMAIN/ns/<ns>/sa/<sa>; default cluster.local)",
    )
    p.add_argument(
        "--pod",
        action="append",
        default=[],
        metavar="NS/NAME",
        help="the pod's namespace/workload, one per --netns in the same order",
    )
    p.add_argument(
        "--iface",
        action="append",
        default=[],
        metavar="IFACE",
        help="host interface watched for ICMP/UDP threats; repeatable (a bridge such as "
        "cni0 shows pod-to-pod traffic)",
    )
    p.add_argument(
        "--host-netns",
        metavar="PATH",
        help="the network namespace of the --iface interfaces (default: the agent's own; "
        "in a pod without hostNetwork, /proc/1/ns/net is the node's, with hostPID)",
    )
    p.add_argument(
        "--no-promisc",
        dest="promisc",
        action="store_false",
        help="do not put --iface interfaces in promiscuous mode (then a bridge shows only "
        "traffic to and from the host itself, not what it forwards between pods)",
    )
    p.add_argument(
        "--pod-iface",
        default="eth0",
        help="pod interface watched for ICMP/UDP ('none': off; default eth0)",
    )
    p.add_argument(
        "--app-port",
        action="append",
        type=int,
        default=[],
        metavar="PORT",
        help="capture only these app ports on lo (default: every port but the "
        "Linkerd proxy's 4140/4143/4190/4191)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--output", choices=["jsonl"], default="jsonl", help="JSON Lines on stdout (default)"
    )
    out.add_argument(
        "--server",
        metavar="URL",
        help="send batches to meshward serve (POST URL/api/v1/observations)",
    )
    p.add_argument(
        "--api-token-file",
        default=os.environ.get("MESHWARD_API_TOKEN_FILE", ""),
        metavar="FILE",
        help="file holding serve's API token, read again when it changes (a ServiceAccount "
        "token in a cluster; default $MESHWARD_API_TOKEN_FILE; $MESHWARD_API_TOKEN gives the "
        "token itself)",
    )
    p.add_argument(
        "--mode",
        action="append",
        default=[],
        metavar="NS=MODE",
        help="a namespace's mode for the ICMP/UDP baseline alerts (overrides the server's); "
        "repeatable",
    )
    p.add_argument(
        "--default-mode",
        choices=MODES,
        default="learn",
        help="mode of namespaces not named otherwise (default learn; with --server, serve's)",
    )
    p.add_argument(
        "--net-config",
        metavar="FILE",
        help="YAML or JSON mapping of ICMP/UDP/DNS thresholds (NetThreatConfig fields)",
    )
    p.add_argument(
        "--no-control-plane-watch",
        dest="control_plane_watch",
        action="store_false",
        help="do not watch TCP connections to istiod and Linkerd's control plane "
        "(Mesh.ControlPlane.Access; needs --node: the control plane is found by label)",
    )
    p.add_argument(
        "--no-bypass-watch",
        dest="bypass_watch",
        action="store_false",
        help="do not watch for plaintext requests reaching enforce-mode pods around their "
        "proxy (Mesh.Sidecar.Bypass); with --node it also attaches the node's Istio pods",
    )
    p.add_argument(
        "--open-port-client",
        action="append",
        default=[],
        metavar="NS/WORKLOAD",
        help="a workload without a sidecar allowed on istiod's 15010/15014 (e.g. "
        "monitoring/prometheus); repeatable",
    )
    p.add_argument(
        "--baseline-file",
        metavar="PATH",
        help="keep the learned UDP peers in this file across restarts (the DaemonSet: "
        "/var/lib/meshward/udp-peers.json; default: memory only)",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=10000,
        help="observations buffered for the output before dropping (default 10000)",
    )
    p.add_argument("--max-body", type=int, default=65536, help="request body bytes kept")
    p.add_argument("--max-flows", type=int, default=20000, help="TCP connections tracked")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        help="seconds before an idle connection is forgotten",
    )
    p.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        help="seconds between metrics log lines (default 10)",
    )
    p.add_argument(
        "--ring-mb",
        type=int,
        default=8,
        help="kernel capture ring per socket in MiB, 2..1024 (two sockets per pod: pinned "
        "memory is pods x 2 x this, an Istio pod's lo socket 2; default 8)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics on this port (default off)",
    )
    p.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        help="address of the Prometheus endpoint (default 0.0.0.0)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="stop after this many seconds (default: until SIGINT/SIGTERM)",
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning (default info)")
    p.set_defaults(func=run)


def _pods(args: argparse.Namespace) -> list[Any]:
    from meshward.core.observation import Identity
    from meshward.tap.node.pipeline import PodTarget

    if args.pod and len(args.pod) != len(args.netns):
        raise UsageError("give one --pod NS/NAME per --netns (or none)")
    pods = []
    for i, netns in enumerate(args.netns):
        ident = Identity()
        if args.pod:
            ns, sep, name = args.pod[i].partition("/")
            if not sep or not ns or not name:
                raise UsageError(f"--pod {args.pod[i]!r} is not NS/NAME")
            ident = Identity(ns, name)
        iface = None if args.pod_iface == "none" else args.pod_iface
        pods.append(PodTarget(netns, ident, iface))
    return pods


def _check(args: argparse.Namespace) -> None:
    if not args.netns and not args.iface and not args.node:
        raise UsageError("nothing to capture: give --node, --netns and/or --iface")
    if args.host_netns and not args.iface:
        raise UsageError("--host-netns names where --iface interfaces are: give --iface too")
    if args.netns and args.node:
        raise UsageError("--netns names pods by hand, --node finds them: give one of the two")
    if args.node and not is_kubernetes_subdomain(args.node):
        raise UsageError(f"--node {args.node!r} is not a Kubernetes node name")
    if not is_kubernetes_subdomain(args.trust_domain):
        raise UsageError(f"--trust-domain {args.trust_domain!r} is not a DNS name")
    for who in args.open_port_client:
        ns, sep, name = who.partition("/")
        if not sep or not is_kubernetes_subdomain(ns) or not name:
            raise UsageError(f"--open-port-client {who!r} is not NS/WORKLOAD")
    if any(not 0 < p < 65536 for p in args.app_port):
        raise UsageError("--app-port must be 1..65535")
    if args.queue_size < 1 or args.max_flows < 1 or args.max_body < 0:
        raise UsageError("--queue-size and --max-flows must be >= 1, --max-body >= 0")
    if args.idle_timeout <= 0 or args.stats_interval <= 0 or args.duration < 0:
        raise UsageError("--idle-timeout and --stats-interval must be > 0, --duration >= 0")
    if args.server and not args.server.startswith(("http://", "https://")):
        raise UsageError(f"--server {args.server!r} must be an http:// or https:// URL")
    if not 2 <= args.ring_mb <= 1024:
        # the ring is 1 MiB blocks: with one, the kernel has nowhere to write while Python
        # reads it
        raise UsageError("--ring-mb must be 2..1024")
    if not 0 <= args.metrics_port < 65536:
        raise UsageError("--metrics-port must be 0..65535")


def _net_config(path: str | None) -> Any:
    """Thresholds for the network detectors from a YAML/JSON file (defaults without one)."""
    import yaml

    from meshward.tap.node.netthreats import NetThreatConfig

    if not path:
        return NetThreatConfig()
    try:
        with open(path, encoding="utf-8") as f:
            return NetThreatConfig.from_dict(yaml.safe_load(f) or {})
    except OSError as exc:
        raise UsageError(f"--net-config {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--net-config {path}: {reason}") from None


def _network_monitor(tap: Any, needed: bool, modes: Any, config: Any) -> Any:
    """The ICMP/UDP detectors, or None when ICMP/UDP is not watched."""
    if not needed:
        return None
    from meshward.tap.node.netthreats import NetworkMonitor

    return NetworkMonitor(config, resolve=tap.resolve, mode_of=modes.mode_of)


def _guard(args: argparse.Namespace, tap: Any, modes: Any) -> Any:
    """The mesh guard's traffic watches on the tap; returns the control-plane view (or None)."""
    from meshward.core.wire import LINKERD_PROXY_PORTS
    from meshward.tap.node.bypass import BypassMonitor
    from meshward.tap.node.controlplane import ControlPlaneConfig, ControlPlaneMonitor

    view = None
    if args.control_plane_watch and args.node:
        from meshward.app.controlplaneview import ControlPlaneView

        view = ControlPlaneView()
        config = ControlPlaneConfig(open_port_clients=tuple(args.open_port_client))
        tap.cpmon = ControlPlaneMonitor(view.endpoint_of, view.client_of, modes.mode_of, config)
    if args.bypass_watch and args.pod_iface != "none" and (args.node or args.netns):
        tap.bypass = BypassMonitor(tap.by_ip.get, modes.mode_of, LINKERD_PROXY_PORTS)
    return view


def _serve_metrics(host: str, port: int, tap: Any) -> None:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import GaugeMetricFamily

    class Collector:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            for name, value in tap.stats().items():
                yield GaugeMetricFamily(f"meshward_nodetap_{name}", name, value=value)

    registry = CollectorRegistry()
    registry.register(Collector())
    start_http_server(port, addr=host, registry=registry)


def _discovery(args: argparse.Namespace, tap: Any, stop: threading.Event, view: Any) -> Any:
    """Pods of this node from the Kubernetes API, attached and detached as they come and go."""
    from meshward.app.nodeagent import PodDiscovery
    from meshward.kube.config import load_client
    from meshward.kube.errors import KubeConfigError

    try:
        api = load_client(args.kubeconfig)
    except KubeConfigError as exc:
        raise UsageError(str(exc)) from None
    iface = None if args.pod_iface == "none" else args.pod_iface
    discovery = PodDiscovery(
        api,
        args.node,
        tap,
        net_iface=iface,
        trust_domain=args.trust_domain,
        on_pods=view.set_local_pods if view is not None else None,
        istio=tap.bypass is not None,  # Istio pods' bypass is seen on their interface and lo
    )
    if view is not None:
        view.start(api)
    discovery.start()

    def retry() -> None:  # namespaces not set up yet, or replaced (a sandbox restart)
        while not stop.wait(2.0):
            discovery.look_again()

    threading.Thread(target=retry, name="pod-retry", daemon=True).start()
    return discovery


def run(args: argparse.Namespace) -> int:
    import os

    from meshward.core.log import event
    from meshward.runtime import jsonlog as log
    from meshward.tap.node.counters import NodeTapCounters
    from meshward.tap.node.modepoll import ModeSource, parse_mode_flags
    from meshward.tap.node.output import HttpOutput, JsonlOutput
    from meshward.tap.node.peerfile import PeerFile
    from meshward.tap.node.pipeline import NodeTap

    try:
        log.setup(args.log_level)
    except ValueError:
        raise UsageError(f"unknown log level {args.log_level!r}") from None
    _check(args)
    try:
        overrides = parse_mode_flags(args.mode)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    token = None if args.api_token_file else os.environ.get("MESHWARD_API_TOKEN") or None
    token_file = args.api_token_file or None
    modes = ModeSource(
        overrides, args.default_mode, args.server, token=token, token_file=token_file
    )
    net_config = _net_config(args.net_config)
    if os.geteuid() != 0:
        raise UsageError("needs root (AF_PACKET capture, entering network namespaces)")
    metrics = NodeTapCounters()
    output = (
        HttpOutput(
            metrics, args.server, token=token, token_file=token_file, max_queue=args.queue_size
        )
        if args.server
        else JsonlOutput(metrics, max_queue=args.queue_size)
    )
    tap = NodeTap(
        _pods(args),
        args.iface,
        output.put,
        metrics,
        args.app_port or None,
        args.max_body,
        args.max_flows,
        args.idle_timeout,
        args.stats_interval,
        ring_mb=args.ring_mb,
        promisc=args.promisc,
        host_netns=args.host_netns,
        peer_file=PeerFile(args.baseline_file) if args.baseline_file else None,
    )
    watch_net = bool(args.iface) or (args.pod_iface != "none" and bool(args.netns or args.node))
    tap.netmon = _network_monitor(tap, watch_net, modes, net_config)
    view = _guard(args, tap, modes)
    try:
        tap.open()
    except OSError as exc:
        raise UsageError(str(exc)) from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.metrics_port:
        _serve_metrics(args.metrics_host, args.metrics_port, tap)
    discovery = _discovery(args, tap, stop, view) if args.node else None
    output.start()
    modes.start()
    try:
        tap.run(stop, duration=args.duration or None)
    finally:
        if discovery is not None:
            discovery.stop()
        if view is not None:
            view.stop()
        modes.stop()
        tap.close()
        output.close()
        event(logging.getLogger("meshward.node-tap"), "node-tap stopped", **tap.stats())
    return 0
