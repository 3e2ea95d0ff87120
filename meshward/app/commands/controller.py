"""`meshward controller`: EnvoyFilters follow each namespace's meshward.io/mode label; the mesh
guard reports configuration changes that weaken a guarded namespace (docs/mesh-guard.md)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading

from meshward.app.commands import UsageError
from meshward.app.install import CONTROLLER_METRICS_PORT
from meshward.core.names import is_host_name, is_kubernetes_name


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "controller",
        help="keep Istio namespaces' meshward filters in step with their meshward.io/mode label",
        description="Watches Namespaces; for each one with Istio sidecar injection it applies "
        "(server-side apply) the objects `meshward istio render` gives for its "
        "meshward.io/mode label and prunes those no longer wanted; its mesh guard reports "
        "changes that weaken a monitor or enforce namespace (Events, and alerts in serve with "
        "--server). One replica leads through a coordination.k8s.io Lease; the others wait.",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster configuration)")
    p.add_argument("--context", help="kubeconfig context (default: its current context)")
    p.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "meshward"),
        help="meshward's namespace, where the Lease lives (default meshward)",
    )
    p.add_argument(
        "--service",
        default="meshward.meshward.svc.cluster.local",
        help="meshward serve's Service host the filters point at",
    )
    p.add_argument("--style", default="envoyfilter", choices=("envoyfilter", "extension-provider"))
    p.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="this replica's name in the Lease (default $POD_NAME)",
    )
    p.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default 15)")
    p.add_argument("--resync", type=float, default=60.0, help="seconds between full passes")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=CONTROLLER_METRICS_PORT,
        help="port of /metrics (Prometheus) and /healthz (liveness); 0: none "
        f"(default {CONTROLLER_METRICS_PORT})",
    )
    p.add_argument("--metrics-host", default="0.0.0.0", help="address of the metrics port")
    p.add_argument(
        "--public-metrics",
        action="store_true",
        help="serve /metrics without a credential (default: a Kubernetes token allowed "
        "`get metrics.meshward.io`, as serve's /metrics)",
    )
    p.add_argument(
        "--guard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the configuration guard: report changes of Istio/Linkerd objects and inject "
        "settings that weaken a monitor or enforce namespace (docs/mesh-guard.md; default on)",
    )
    p.add_argument(
        "--istio-root-namespace",
        default="istio-system",
        help="Istio's root namespace: its objects without a selector cover the whole mesh "
        "(default istio-system)",
    )
    p.add_argument(
        "--server",
        help="meshward serve's HTTP URL: guard findings are sent there as alerts "
        "(POST /api/v1/findings; default: Events only)",
    )
    p.add_argument(
        "--api-token-file",
        default=os.environ.get("MESHWARD_API_TOKEN_FILE"),
        help="file holding the token for --server, read again when it changes (in a cluster "
        "a projected ServiceAccount token with audience meshward; $MESHWARD_API_TOKEN gives "
        "the token itself)",
    )
    p.add_argument(
        "--audit-webhook-port",
        type=int,
        default=0,
        help="HTTPS port taking the API server's audit Events (its audit webhook backend), so "
        "guard findings name the user who made a change (docs/mesh-guard.md); 0: off (default)",
    )
    p.add_argument("--audit-webhook-host", default="0.0.0.0", help="address of that port")
    p.add_argument("--audit-webhook-cert", help="the port's TLS certificate (PEM)")
    p.add_argument("--audit-webhook-key", help="the port's TLS private key (PEM)")
    p.add_argument(
        "--audit-webhook-token-file",
        help="file holding the bearer token the webhook kubeconfig sends (read again when it "
        "changes)",
    )
    p.add_argument(
        "--audit-webhook-client-ca",
        help="CA verifying the client certificate the webhook kubeconfig presents (either this "
        "or a token file is required; both: both are checked)",
    )
    p.add_argument(
        "--audit-wait",
        type=float,
        default=35.0,
        help="seconds a finding waits for the audit Event of its change (cover the API "
        "server's --audit-webhook-batch-max-wait, 30 s by default; default 35)",
    )
    p.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="the mesh's trust domain: learned callers become principals in it when ALLOW "
        "policies are compared with the learned allowlists (default cluster.local)",
    )
    p.add_argument(
        "--selector-label",
        default="app",
        metavar="KEY",
        help="the pod label whose value is the workload's name, as `allowlist export` writes "
        "it: a policy's selector names its learned workload by it (default app)",
    )
    p.add_argument(
        "--learned-refresh",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often the guard reads serve's learned allowlists again (default 30; the last "
        "copy serves for 10 times as long when serve cannot be reached)",
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning (default info)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshward.app.controller import Controller, ControllerConfig
    from meshward.core.log import event
    from meshward.kube.config import load_client
    from meshward.kube.errors import KubeConfigError
    from meshward.kube.leader import LeaderElector
    from meshward.runtime import jsonlog

    try:
        jsonlog.setup(args.log_level)
    except ValueError:
        raise UsageError(f"unknown log level {args.log_level!r}") from None
    if not is_kubernetes_name(args.namespace):
        raise UsageError(f"--namespace {args.namespace!r} is not a Kubernetes name")
    if not is_host_name(args.service):
        raise UsageError(f"--service {args.service!r} is not a host name")
    if not args.identity or not 2.0 < args.lease_duration <= 600 or args.resync <= 0:
        raise UsageError("--identity must be set, --lease-duration 2..600 s, --resync > 0")
    if args.server and not args.server.startswith(("http://", "https://")):
        raise UsageError(f"--server {args.server!r} must be an http:// or https:// URL")
    if not is_kubernetes_name(args.istio_root_namespace):
        raise UsageError(f"--istio-root-namespace {args.istio_root_namespace!r} is not a name")
    if not 1.0 <= args.learned_refresh <= 3600:
        raise UsageError("--learned-refresh must be 1..3600 seconds")
    if not is_host_name(args.trust_domain) or not args.selector_label:
        raise UsageError("--trust-domain must be a host name, --selector-label a label key")
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be 0..65535 (0: no metrics port)")
    if not 0 <= args.audit_webhook_port <= 65535 or not 0 < args.audit_wait <= 600:
        raise UsageError("--audit-webhook-port must be 0..65535, --audit-wait 0..600 s")
    if args.audit_webhook_port and not args.guard:
        raise UsageError("--audit-webhook-port needs the guard (--guard)")
    if args.audit_webhook_port and not (args.audit_webhook_cert and args.audit_webhook_key):
        raise UsageError("--audit-webhook-port needs --audit-webhook-cert and --audit-webhook-key")
    try:
        api = load_client(args.kubeconfig, context=args.context)
    except KubeConfigError as exc:
        raise UsageError(str(exc)) from None
    config = ControllerConfig(
        service=args.service,
        style=args.style,
        namespace=args.namespace,
        identity=args.identity,
        resync=args.resync,
    )
    ctl = Controller(api, config)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        ctl.wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    d = args.lease_duration
    elector = LeaderElector(
        api,
        args.namespace,
        config.lease_name,
        args.identity,
        lease_duration=d,
        renew_deadline=d * 2 / 3,
        retry_period=d / 7.5,
        on_started_leading=ctl.wake.set,
    )
    if args.guard:
        from meshward.app.guardlearned import LearnedAllowlists
        from meshward.app.meshguard import MeshGuard
        from meshward.core.kubeaudit import Authors
        from meshward.runtime.client import ApiClient

        alerts = None
        if args.server:
            alerts = ApiClient.configured(args.server, token_file=args.api_token_file)
        learned = LearnedAllowlists(
            alerts,
            refresh=args.learned_refresh,
            max_age=10 * args.learned_refresh,
            trust_domain=args.trust_domain,
            selector_label=args.selector_label,
        )
        ctl.guard = MeshGuard(
            api,
            root_namespace=args.istio_root_namespace,
            alerts=alerts,
            leading=elector.leading,
            hold=2 * d,  # findings of a replica starting up wait this long for the Lease
            authors=Authors() if args.audit_webhook_port else None,
            audit_wait=args.audit_wait,
            learned=learned,
        )
    audit_port = None
    if args.audit_webhook_port and ctl.guard is not None:
        from meshward.app.kubeauditport import AuditConfigError, AuditPort

        try:
            audit_port = AuditPort(
                ctl.guard,
                cert=args.audit_webhook_cert,
                key=args.audit_webhook_key,
                token_file=args.audit_webhook_token_file,
                client_ca=args.audit_webhook_client_ca,
                leading=elector.leading,
                host=args.audit_webhook_host,
                port=args.audit_webhook_port,
            )
            audit_port.start()
        except AuditConfigError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"--audit-webhook-port: {exc.strerror or exc}") from None
    kinds: tuple[str, ...] = ("EnvoyFilter", "DestinationRule")
    if args.style == "extension-provider":
        kinds = (*kinds, "AuthorizationPolicy")
    log = logging.getLogger("meshward.controller")
    event(log, "starting", identity=args.identity, style=args.style, service=args.service)
    port = None
    if args.metrics_port:
        from meshward.app.controllermetrics import MetricsPort, kubernetes_guard

        guard = kubernetes_guard(api, args.public_metrics)
        port = MetricsPort(ctl, guard, elector.leading, args.metrics_host, args.metrics_port)
        try:
            port.start()
        except OSError as exc:
            raise UsageError(f"--metrics-port {args.metrics_port}: {exc.strerror or exc}") from None
    ctl.start_watches(kinds)
    elector.start()
    try:
        ctl.run(stop, elector.leading)
    finally:
        elector.stop()
        if port is not None:
            port.stop()
        if audit_port is not None:
            audit_port.stop()
        ctl.stop_watches()
        event(log, "stopped", **vars(ctl.counters))
    return 0
