"""`meshward serve`: ext_authz, the Envoy tap and the HTTP API in one process."""

from __future__ import annotations

import argparse
import os

from meshward.app.commands import UsageError
from meshward.app.commands.engineflags import add_engine_flags, engine_config


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise UsageError(f"{name}={raw!r} is not a port number")
    return int(raw)


def _number(
    flag: float | None, env: str, default: float, low: float, high: float, rule: str
) -> float:
    """A number from its flag, else its environment variable, else `default`; outside
    `low`..`high` a usage error saying `rule`."""
    raw = os.environ.get(env, "")
    try:
        value = flag if flag is not None else float(raw or default)
    except ValueError:
        raise UsageError(f"{env}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise UsageError(rule)
    return value


def _flush_interval(flag: float | None) -> float:
    rule = "--flush-interval must be 0.05..3600 seconds"
    return _number(flag, "MESHWARD_FLUSH_INTERVAL", 2.0, 0.05, 3600, rule)


def _ingest_share(flag: float | None) -> float:
    from meshward.app.ingest import DEFAULT_SHARE

    rule = "--ingest-share must be 0.01..1 (a fraction of one CPU)"
    return _number(flag, "MESHWARD_INGEST_SHARE", DEFAULT_SHARE, 0.01, 1, rule)


def _ingest_cpu(flag: str | None) -> str:
    from meshward.app.cpusplit import AUTO, CpuSplit

    value = flag if flag is not None else os.environ.get("MESHWARD_INGEST_CPU", "") or AUTO
    try:
        CpuSplit(value)
    except ValueError as exc:
        raise UsageError(f"--ingest-cpu: {exc}") from None
    return value


def _env_flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise UsageError(f"{name}={raw!r} is not 1 or 0")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the ext_authz service, the Envoy tap receiver and the HTTP API",
        description="ext_authz gRPC, ext_proc tap gRPC and HTTP (API, /metrics, /healthz) on "
        "one event loop sharing one engine. Flags override MESHWARD_* environment variables.",
    )
    p.add_argument("--db", help="SQLite store path (env MESHWARD_DB, default ./meshward.db)")
    p.add_argument(
        "--listen-host", help="address to listen on (env MESHWARD_LISTEN_HOST, default 0.0.0.0)"
    )
    p.add_argument(
        "--authz-port", type=int, help="ext_authz gRPC port (env MESHWARD_AUTHZ_PORT, default 9191)"
    )
    p.add_argument(
        "--tap-port", type=int, help="ext_proc tap gRPC port (env MESHWARD_TAP_PORT, default 9192)"
    )
    p.add_argument(
        "--http-port", type=int, help="HTTP API port (env MESHWARD_HTTP_PORT, default 9193)"
    )
    p.add_argument(
        "--tap-max-body",
        type=int,
        default=64 * 1024,
        help="request body bytes kept per tap stream (default 65536)",
    )
    p.add_argument(
        "--tap-buffer-mb",
        type=int,
        default=256,
        help="MiB all open tap streams may hold together; past it, big streams are cut and "
        "flagged as truncated (default 256)",
    )
    p.add_argument(
        "--tap-stream-timeout",
        type=float,
        default=30.0,
        help="seconds before an unfinished tap stream expires (default 30)",
    )
    p.add_argument(
        "--store",
        choices=("sqlite", "kubernetes"),
        help="where allowlists and modes live: the SQLite file of --db (one replica), or "
        "Allowlist objects and Namespace labels shared by every replica (env MESHWARD_STORE, "
        "default sqlite; docs/kubestore.md)",
    )
    p.add_argument(
        "--replica",
        help="with --store kubernetes: this replica's id (env POD_NAME, else the host name)",
    )
    p.add_argument(
        "--cluster-namespace",
        help="with --store kubernetes: meshward's namespace, for the objects of destinations "
        "that are no service name (env POD_NAMESPACE, default meshward)",
    )
    p.add_argument(
        "--alerts-dsn",
        help="PostgreSQL DSN of the alerts and edge-count store every replica shares (env "
        "MESHWARD_ALERTS_DSN, preferred: an argument is visible to ps; default: the SQLite "
        "file of --db)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        help="seconds between batched store writes, also how soon other replicas' changes "
        "apply (env MESHWARD_FLUSH_INTERVAL, default 2)",
    )
    p.add_argument(
        "--ingest-share",
        type=float,
        help="the fraction of one CPU the ingest worker may use while ext_authz Checks are "
        "being answered (it works 1 ms, then rests; at full speed when none came for 1 s): "
        "lower keeps the Checks' tail closer to its baseline on a small machine, higher "
        "ingests faster (env MESHWARD_INGEST_SHARE, default 0.25: a quarter of one CPU)",
    )
    p.add_argument(
        "--ingest-cpu",
        help="the CPU the ingest worker runs on, serve's threads kept off it while a batch is "
        "in the worker, so Checks do not wake where a batch just filled the caches: auto (the "
        "highest CPU serve may use, when it may use two or more), off, or a CPU number (env "
        "MESHWARD_INGEST_CPU, default auto)",
    )
    p.add_argument(
        "--api-token-file",
        help="file holding the HTTP API's bearer token (mode 0600; env MESHWARD_API_TOKEN gives "
        "the token itself; default: api-token beside the store, generated at first start)",
    )
    p.add_argument(
        "--auth",
        choices=["token", "kubernetes"],
        help="who may call the HTTP API (env MESHWARD_AUTH): token (default) = the API token; "
        "kubernetes = Kubernetes tokens checked with TokenReview and authorized by RBAC on "
        "meshward.io resources (SubjectAccessReview); modes are then Namespace labels only",
    )
    p.add_argument(
        "--kubeconfig",
        help="kubeconfig for serve's own Kubernetes calls (default: in-cluster configuration)",
    )
    p.add_argument(
        "--token-audience",
        action="append",
        metavar="AUD",
        help="with --auth kubernetes, a token must be minted for this audience (repeatable; "
        "default meshward: a token for the API server is not accepted)",
    )
    p.add_argument(
        "--public-metrics",
        action="store_true",
        default=None,
        help="serve /metrics without a credential (env MESHWARD_PUBLIC_METRICS=1; default: "
        "/metrics needs the token like the API, since it names namespaces, workloads and threats)",
    )
    g = p.add_argument_group(
        "who may call the gRPC ports (docs/security.md)",
        "By default serve terminates mTLS on 9191/9192 with its CA and takes whose traffic it "
        "is from the caller's certificate (spiffe://TRUST-DOMAIN/ns/NS/sa/SA).",
    )
    g.add_argument(
        "--grpc-ca-dir",
        metavar="DIR",
        help="the CA (ca.crt, ca.key) sidecar certificates come from: created there at first "
        "start if absent; every replica must use the same one (a shared directory or a mounted "
        "Secret) (env MESHWARD_GRPC_CA_DIR, default meshward-ca beside --db); changes to it and "
        "to the revocation list `revoked` there are followed without a restart (`meshward ca`)",
    )
    g.add_argument(
        "--trust-domain",
        help="the SPIFFE trust domain of callers (env MESHWARD_TRUST_DOMAIN, default "
        "cluster.local)",
    )
    g.add_argument(
        "--identity",
        metavar="SPIFFE_ID",
        help="serve's own SPIFFE id: in its certificate, and the By= of the XFCC element its "
        "sidecar appends (default spiffe://TRUST-DOMAIN/ns/meshward/sa/meshward)",
    )
    g.add_argument(
        "--grpc-plaintext",
        action="store_true",
        help="INSECURE unless behind meshward's own Istio sidecar with STRICT mTLS: plaintext "
        "gRPC, callers trusted only from the x-forwarded-client-cert element that sidecar "
        "appends (By= --identity); logged loudly",
    )
    p.add_argument(
        "--grpc-reflection",
        action="store_true",
        help="serve gRPC reflection on both gRPC ports (off by default: it tells anyone who "
        "can connect what the ports serve; for debugging with grpcurl)",
    )
    add_engine_flags(p)
    p.add_argument("--log-level", default="info", help="debug, info, warning (default info)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshward.app.auth import AuthConfig, TokenError
    from meshward.app.serve import ServeConfig
    from meshward.app.serve import run as serve
    from meshward.app.store import StoreError
    from meshward.istio.certs import CertError
    from meshward.runtime import jsonlog as log
    from meshward.runtime.grpcpeer import PeerPolicy
    from meshward.tap.envoy.assemble import TapLimits

    try:
        log.setup(args.log_level)
    except ValueError:
        raise UsageError(f"unknown log level {args.log_level!r}") from None
    auth = args.auth or os.environ.get("MESHWARD_AUTH") or "token"
    if auth not in ("token", "kubernetes"):
        raise UsageError(f"MESHWARD_AUTH={auth!r} is not token or kubernetes")
    kube_auth = auth == "kubernetes"
    store = args.store or os.environ.get("MESHWARD_STORE") or "sqlite"
    if store not in ("sqlite", "kubernetes"):
        raise UsageError(f"MESHWARD_STORE={store!r}: expected sqlite or kubernetes")
    try:
        peers = PeerPolicy(
            kind="xfcc" if args.grpc_plaintext else "mtls",
            trust_domain=args.trust_domain
            or os.environ.get("MESHWARD_TRUST_DOMAIN")
            or "cluster.local",
            identity=args.identity or "",
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = ServeConfig(
        db=args.db or os.environ.get("MESHWARD_DB") or "./meshward.db",
        listen_host=args.listen_host or os.environ.get("MESHWARD_LISTEN_HOST") or "0.0.0.0",
        authz_port=args.authz_port
        if args.authz_port is not None
        else _env_port("MESHWARD_AUTHZ_PORT", 9191),
        tap_port=args.tap_port
        if args.tap_port is not None
        else _env_port("MESHWARD_TAP_PORT", 9192),
        http_port=args.http_port
        if args.http_port is not None
        else _env_port("MESHWARD_HTTP_PORT", 9193),
        tap_limits=TapLimits(max_body=args.tap_max_body),
        tap_stream_timeout=args.tap_stream_timeout,
        tap_max_buffered=args.tap_buffer_mb * 1024 * 1024,
        engine=engine_config(args),
        store=store,
        kubeconfig=args.kubeconfig,
        replica=args.replica or "",
        cluster_namespace=args.cluster_namespace or os.environ.get("POD_NAMESPACE") or "meshward",
        flush_interval=_flush_interval(args.flush_interval),
        ingest_share=_ingest_share(args.ingest_share),
        ingest_cpu=_ingest_cpu(args.ingest_cpu),
        alerts_dsn=args.alerts_dsn or os.environ.get("MESHWARD_ALERTS_DSN") or None,
        # in a cluster (either Kubernetes option) the mode is the Namespace label
        modes_from_labels=kube_auth or store == "kubernetes",
        peers=peers,
        grpc_ca_dir=args.grpc_ca_dir or os.environ.get("MESHWARD_GRPC_CA_DIR") or "",
        auth=AuthConfig(
            kubernetes=kube_auth,
            kubeconfig=args.kubeconfig,
            audiences=tuple(args.token_audience or ("meshward",)),
            token_file=args.api_token_file or None,
            public_metrics=args.public_metrics
            if args.public_metrics is not None
            else _env_flag("MESHWARD_PUBLIC_METRICS"),
        ),
        grpc_reflection=args.grpc_reflection,
    )
    for name in ("authz_port", "tap_port", "http_port"):
        if not 0 <= getattr(config, name) <= 65535:
            raise UsageError(f"--{name.replace('_', '-')} must be 0..65535")
    if args.tap_max_body < 0 or args.tap_stream_timeout <= 0 or args.tap_buffer_mb <= 0:
        raise UsageError(
            "--tap-max-body must be >= 0, --tap-stream-timeout and --tap-buffer-mb > 0"
        )
    try:
        serve(config)
    except (OSError, StoreError, TokenError, CertError, ValueError) as exc:
        raise UsageError(f"cannot serve: {exc}") from None
    return 0
