"""`meshward envoy bootstrap`: a sidecar-equivalent Envoy bootstrap with meshward's filters."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meshward.app.commands import UsageError
from meshward.core.modes import MODES
from meshward.core.names import is_host_name
from meshward.core.wire import TAP_CLOSE_TIMEOUT_MS, TAP_STREAM_WINDOW
from meshward.istio.tls import SidecarTLS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "envoy",
        help="render Envoy configuration carrying meshward's filters",
        description="Envoy configuration from the same filter config the EnvoyFilter carries.",
    )
    sub = p.add_subparsers(dest="envoy_command", metavar="SUBCOMMAND")
    sub.required = True
    b = sub.add_parser(
        "bootstrap",
        help="a complete sidecar-equivalent Envoy bootstrap (YAML or JSON on stdout)",
        description="listener -> HTTP connection manager -> meshward filters (by mode) -> router "
        "-> upstream. learn/monitor install the tap only; enforce adds ext_authz.",
    )
    b.add_argument("--listen", type=int, required=True, metavar="PORT", help="listener port")
    b.add_argument("--listen-host", default="127.0.0.1", help="listener address (127.0.0.1)")
    b.add_argument(
        "--upstream",
        required=True,
        metavar="HOST:PORT",
        help="the app (or, with --direction outbound, the callee's sidecar)",
    )
    b.add_argument("--namespace", required=True)
    b.add_argument("--workload", required=True)
    b.add_argument("--mode", required=True, choices=MODES)
    b.add_argument(
        "--server",
        default="127.0.0.1",
        metavar="HOST",
        help="meshward serve's address (IP or DNS name)",
    )
    b.add_argument("--authz-port", type=int, default=9191)
    b.add_argument("--tap-port", type=int, default=9192)
    b.add_argument("--admin-port", type=int, default=0, help="admin on 127.0.0.1 (0: any)")
    b.add_argument(
        "--direction",
        default="inbound",
        choices=("inbound", "outbound"),
        help="inbound: the callee's sidecar; outbound: the caller's",
    )
    b.add_argument("--upstream-h2", action="store_true", help="HTTP/2 to the upstream (gRPC)")
    b.add_argument(
        "--body-limit",
        type=int,
        default=8192,
        help="request body bytes sent with each Check (8192)",
    )
    add_tap_flags(b)
    t = b.add_argument_group(
        "mTLS to meshward serve",
        "The ext_authz and tap clusters present this workload's certificate (its SPIFFE id "
        "spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT), issued from meshward's CA: "
        "serve takes whose traffic it is from it.",
    )
    t.add_argument(
        "--ca-dir",
        default="meshward-ca",
        metavar="DIR",
        help="meshward's CA, as serve uses it (serve's --grpc-ca-dir; created if absent) "
        "(meshward-ca)",
    )
    t.add_argument(
        "--cert-dir",
        metavar="DIR",
        help="where this workload's key and certificate are written (CA-DIR/issued)",
    )
    t.add_argument("--service-account", help="the workload's service account (--workload)")
    t.add_argument("--trust-domain", default="cluster.local", help="(cluster.local)")
    t.add_argument(
        "--server-identity",
        metavar="SPIFFE_ID",
        help="the SPIFFE id serve must present (spiffe://TRUST-DOMAIN/ns/meshward/sa/meshward)",
    )
    t.add_argument(
        "--server-plaintext",
        action="store_true",
        help="plaintext to serve (serve --grpc-plaintext behind its own sidecar)",
    )
    b.add_argument("--format", default="yaml", choices=("yaml", "json"))
    b.add_argument(
        "--validate",
        action="store_true",
        help="also load it into envoy --mode validate; exit 1 if Envoy rejects it",
    )
    b.set_defaults(func=bootstrap)


# the tap's lag settings (core/wire.py), flag name -> keyword of the renderers
TAP_FLAGS = ("tap_close_timeout_ms", "tap_stream_window")


def add_tap_flags(parser: argparse.ArgumentParser) -> None:
    """How far meshward may fall behind the sidecars' tap copies (shared by every renderer)."""
    parser.add_argument(
        "--tap-close-timeout-ms",
        type=int,
        default=TAP_CLOSE_TIMEOUT_MS,
        metavar="MS",
        help="how long a sidecar keeps a tap stream meshward has not read yet before it drops "
        f"the copy (ext_proc deferred_close_timeout; {TAP_CLOSE_TIMEOUT_MS})",
    )
    parser.add_argument(
        "--tap-stream-window",
        type=int,
        default=TAP_STREAM_WINDOW,
        metavar="N",
        help="tap streams open at once per connection to meshward; more wait in the sidecar "
        f"({TAP_STREAM_WINDOW})",
    )


def dump(data: object, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    from meshward.formats import yamlout

    return yamlout.dump(data)


def _workload_tls(args: argparse.Namespace) -> SidecarTLS | None:
    """This workload's certificate from meshward's CA (None with --server-plaintext)."""
    if args.server_plaintext:
        return None
    from pathlib import Path

    from meshward.core.names import is_kubernetes_name
    from meshward.istio.certs import (
        CA_DAYS,
        ISSUED_DIR,
        WORKLOAD_DAYS,
        CertError,
        MeshCA,
        write_sds,
    )

    account = args.service_account or args.workload
    if not is_kubernetes_name(args.namespace) or not is_kubernetes_name(account.replace(".", "-")):
        raise UsageError("--namespace and --service-account must be Kubernetes names")
    ca_dir = Path(args.ca_dir)
    try:
        ca = MeshCA(ca_dir, days=CA_DAYS, trust_domain=args.trust_domain)
        with ca.locked():
            issued = ca.issue(
                args.namespace,
                account,
                out=Path(args.cert_dir) if args.cert_dir else ca_dir / ISSUED_DIR,
                days=WORKLOAD_DAYS,
            )
        # Envoy reads it through file-based SDS: `meshward ca issue/renew` rotate it in place
        return write_sds(issued)
    except (CertError, OSError) as exc:
        raise UsageError(f"cannot issue the workload certificate: {exc}") from None


def bootstrap(args: argparse.Namespace) -> int:
    from meshward.core.peer import meshward_identity
    from meshward.istio.bootstrap import render_bootstrap

    for flag in ("authz_port", "tap_port", "admin_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            raise UsageError(f"--{flag.replace('_', '-')} must be 0..65535")
    if not is_host_name(args.server):
        raise UsageError(f"--server {args.server!r} is not a host name or address")
    try:
        passed = (
            "authz_port",
            "tap_port",
            "admin_port",
            "listen_host",
            "upstream_h2",
            "direction",
            "body_limit",
            *TAP_FLAGS,
        )
        config = render_bootstrap(
            args.listen,
            args.upstream,
            args.namespace,
            args.workload,
            args.mode,
            server_host=args.server,
            meshward_tls=_workload_tls(args),
            server_identity=args.server_identity or meshward_identity(args.trust_domain),
            **{name: getattr(args, name) for name in passed},
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.validate:
        from meshward.istio.envoyproc import EnvoyError, validate

        try:
            version = validate(config)
        except EnvoyError as exc:
            print(f"meshward envoy bootstrap: {exc}", file=sys.stderr)
            return 1
        # stderr: stdout is the configuration itself
        print(f"meshward envoy bootstrap: valid: {validated(config, version)}", file=sys.stderr)
    sys.stdout.write(dump(config, args.format))
    return 0


def validated(config: dict[str, Any], version: str) -> str:
    """What `--validate` had Envoy check, in one line: the listeners with their HTTP filters,
    and the clusters."""
    resources = config.get("static_resources", {})
    listeners = []
    for listener in resources.get("listeners", []):
        addr = listener.get("address", {}).get("socket_address", {})
        filters = [
            h.get("name", "").removeprefix("envoy.filters.http.")
            for chain in listener.get("filter_chains", [])
            for f in chain.get("filters", [])
            for h in f.get("typed_config", {}).get("http_filters", [])
        ]
        listeners.append(
            f"listener {addr.get('address', '?')}:{addr.get('port_value', '?')} "
            f"({' -> '.join(filters)})"
        )
    clusters = ", ".join(c.get("name", "?") for c in resources.get("clusters", []))
    return (
        f"Envoy {version} loaded it (envoy --mode validate): {'; '.join(listeners)}; "
        f"clusters {clusters}"
    )
