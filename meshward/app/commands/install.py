"""`meshward install` and `meshward uninstall`: the cluster's manifests on stdout.

meshward install | kubectl apply -f -
meshward uninstall | kubectl delete -f -
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from meshward.app.commands import UsageError
from meshward.app.commands.envoy import dump
from meshward.core.names import is_kubernetes_name, is_kubernetes_subdomain

if TYPE_CHECKING:
    from meshward.app.install import InstallOptions


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--namespace", default="meshward", help="meshward's namespace (default meshward)"
    )
    p.add_argument("--image", help="the meshward image (default ghcr.io/meshward/meshward:VERSION)")
    p.add_argument("--replicas", type=int, default=2, help="serve replicas (default 2)")
    p.add_argument(
        "--istio-style",
        default="envoyfilter",
        choices=("envoyfilter", "extension-provider"),
        help="how the controller wires ext_authz into Istio namespaces (default envoyfilter)",
    )
    p.add_argument(
        "--kube-version",
        default="1.31",
        help="the cluster's Kubernetes version, MAJOR.MINOR (default 1.31; 1.20 renders "
        "PodDisruptionBudget policy/v1beta1)",
    )
    p.add_argument(
        "--alerts-dsn-secret",
        metavar="SECRET",
        help="a Secret in meshward's namespace whose key `dsn` is the PostgreSQL DSN of the "
        "alerts store every serve replica shares (meshward deploys no database); without it "
        "each replica keeps its own alerts",
    )
    p.add_argument(
        "--node-tap-iface",
        action="append",
        default=[],
        metavar="IFACE",
        help="node interface the node tap watches for ICMP/UDP, e.g. the bridge cni0 "
        "(repeatable; adds hostPID and SYS_PTRACE to reach the node's network namespace)",
    )
    p.add_argument(
        "--node-tap-proc-scan",
        action="store_true",
        help="find pod network namespaces through /proc too, for runtimes that do not name "
        "them under /var/run/netns (adds hostPID and SYS_PTRACE)",
    )
    p.add_argument(
        "--audit-webhook-secret",
        metavar="SECRET",
        help="a Secret in meshward's namespace with tls.crt, tls.key and token: the controller "
        "then takes the API server's audit Events on port 9195 (Service "
        "meshward-controller-audit), so guard findings name the user (docs/mesh-guard.md)",
    )
    p.add_argument("--format", default="yaml", choices=("yaml", "json"))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "install",
        help="print every manifest meshward needs in a cluster (pipe to kubectl apply -f -)",
        description="Namespace, the meshward.io CRDs, ServiceAccounts and least-privilege RBAC, "
        "serve, controller and node-tap workloads, Services and NetworkPolicies, as one YAML "
        "stream in apply order. With --istio-style extension-provider, also writes the "
        "meshConfig fragment for istioctl or Helm to --mesh-config FILE.",
    )
    _common(p)
    p.add_argument("--mesh-config", metavar="FILE", help="where to write the meshConfig fragment")
    p.add_argument(
        "--audit-policy",
        metavar="FILE",
        help="write the API server's audit policy the mesh guard needs (its --audit-policy-file; "
        "with a policy of your own, put its rules first) to FILE",
    )
    p.set_defaults(func=install)
    u = subparsers.add_parser(
        "uninstall",
        help="print what kubectl delete -f - needs to remove meshward",
        description="The same objects as install, in reverse order, for kubectl delete -f -. "
        "The EnvoyFilters and DestinationRules the controller applied carry the label "
        "app.kubernetes.io/managed-by=meshward: remove them first with "
        "kubectl delete envoyfilters,destinationrules -A -l "
        "app.kubernetes.io/managed-by=meshward",
    )
    _common(u)
    u.set_defaults(func=uninstall)


def _options(args: argparse.Namespace) -> InstallOptions:
    from meshward.app.install import InstallOptions, parse_kube_version

    if not is_kubernetes_name(args.namespace):
        raise UsageError(f"--namespace {args.namespace!r} is not a Kubernetes name")
    if args.replicas < 1 or args.replicas > 100:
        raise UsageError("--replicas must be 1..100")
    if args.image is not None and (not args.image or any(c.isspace() for c in args.image)):
        raise UsageError(f"--image {args.image!r} is not an image reference")
    try:
        version = parse_kube_version(args.kube_version)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    secret = args.alerts_dsn_secret
    if secret is not None and not is_kubernetes_subdomain(secret):
        raise UsageError(f"--alerts-dsn-secret {secret!r} is not a Kubernetes name")
    audit = args.audit_webhook_secret
    if audit is not None and not is_kubernetes_subdomain(audit):
        raise UsageError(f"--audit-webhook-secret {audit!r} is not a Kubernetes name")
    for iface in args.node_tap_iface:
        if not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", iface):
            raise UsageError(f"--node-tap-iface {iface!r} is not an interface name")
    extra = {"image": args.image} if args.image else {}
    return InstallOptions(
        namespace=args.namespace,
        replicas=args.replicas,
        istio_style=args.istio_style,
        kube_version=version,
        alerts_dsn_secret=secret,
        node_ifaces=tuple(args.node_tap_iface),
        node_proc_scan=args.node_tap_proc_scan,
        audit_webhook_secret=audit,
        **extra,
    )


def _print(objects: list[dict[str, object]], fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(dump({"apiVersion": "v1", "kind": "List", "items": objects}, "json"))
        return
    for obj in objects:
        sys.stdout.write("---\n" + dump(obj, "yaml"))


def install(args: argparse.Namespace) -> int:
    from meshward.app.install import mesh_config, render

    opts = _options(args)
    if opts.istio_style == "extension-provider":
        if not args.mesh_config:
            raise UsageError(
                "--istio-style extension-provider needs --mesh-config FILE: the meshConfig "
                "fragment is merged by istioctl or Helm, never by kubectl apply"
            )
        try:
            with open(args.mesh_config, "w") as fh:
                fh.write(dump(mesh_config(opts), args.format))
        except OSError as exc:
            raise UsageError(f"cannot write {args.mesh_config}: {exc.strerror or exc}") from None
        print(
            f"meshConfig fragment written to {args.mesh_config}: merge it with "
            f"`istioctl install -f {args.mesh_config}` or into istiod's Helm values",
            file=sys.stderr,
        )
    if args.audit_policy:
        from meshward.app.install import audit_policy

        try:
            with open(args.audit_policy, "w") as fh:
                fh.write(dump(audit_policy(), "yaml"))
        except OSError as exc:
            raise UsageError(f"cannot write {args.audit_policy}: {exc.strerror or exc}") from None
        print(
            f"audit policy written to {args.audit_policy}: the API server's "
            "--audit-policy-file (docs/mesh-guard.md, the audit log)",
            file=sys.stderr,
        )
    if opts.replicas > 1 and not opts.alerts_dsn_secret:
        print(
            f"note: {opts.replicas} serve replicas share the allowlists, but without "
            "--alerts-dsn-secret each keeps its own alerts (docs/kubestore.md)",
            file=sys.stderr,
        )
    _print(render(opts), args.format)
    return 0


def uninstall(args: argparse.Namespace) -> int:
    from meshward.app.install import render

    _print(list(reversed(render(_options(args)))), args.format)
    return 0
