"""`meshward istio render`: the Istio objects that put meshward's filters into a namespace."""

from __future__ import annotations

import argparse
import sys

from meshward.app.commands import UsageError
from meshward.app.commands.envoy import TAP_FLAGS, add_tap_flags, dump
from meshward.core.modes import MODES
from meshward.core.names import is_host_name


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("istio", help="render Istio objects for meshward")
    sub = p.add_subparsers(dest="istio_command", metavar="SUBCOMMAND")
    sub.required = True
    r = sub.add_parser(
        "render",
        help="EnvoyFilter (or extension provider + AuthorizationPolicy) for a namespace",
        description="Kubernetes objects on stdout, a YAML stream (kubectl apply -f -). Re-render "
        "and apply on a mode change. --style extension-provider also prints the meshConfig "
        "fragment to merge into istiod's mesh config (first document, or --mesh-config FILE).",
    )
    r.add_argument("--namespace", required=True)
    r.add_argument("--mode", required=True, choices=MODES)
    r.add_argument(
        "--service",
        default="meshward.meshward.svc.cluster.local",
        help="meshward serve's Kubernetes service (DNS name)",
    )
    r.add_argument("--style", default="envoyfilter", choices=("envoyfilter", "extension-provider"))
    r.add_argument(
        "--workload",
        default="",
        help="only this workload's pods: its name as its owner references give it (the "
        "Deployment, StatefulSet or DaemonSet; serve checks it against the pod's service "
        "account); its pods are selected by the label app=WORKLOAD unless --selector",
    )
    r.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --workload, the pod labels that select its pods (repeatable; default "
        "app=WORKLOAD)",
    )
    r.add_argument("--authz-port", type=int, default=9191)
    r.add_argument("--tap-port", type=int, default=9192)
    r.add_argument("--body-limit", type=int, default=8192)
    r.add_argument(
        "--no-outbound-tap",
        action="store_true",
        help="tap inbound traffic only (default: also the callers' outbound side, for the "
        "both-ends join)",
    )
    r.add_argument(
        "--mesh-config",
        metavar="FILE",
        help="write the meshConfig fragment to FILE instead of stdout",
    )
    add_tap_flags(r)
    r.add_argument("--format", default="yaml", choices=("yaml", "json"))
    r.set_defaults(func=render)


def _label(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"--selector {item!r} is not KEY=VALUE")
    return key, value


def render(args: argparse.Namespace) -> int:
    from meshward.istio.envoyfilter import render as render_objects

    for flag in ("authz_port", "tap_port"):
        if not 0 < getattr(args, flag) <= 65535:
            raise UsageError(f"--{flag.replace('_', '-')} must be 1..65535")
    if not is_host_name(args.service):
        raise UsageError(f"--service {args.service!r} is not a host name")
    try:
        passed = (
            "style",
            "service",
            "authz_port",
            "tap_port",
            "workload",
            "body_limit",
            *TAP_FLAGS,
        )
        selector = dict(_label(item) for item in args.selector) or None
        if selector and not args.workload:
            raise ValueError("--selector needs --workload (the name serve checks)")
        out = render_objects(
            args.namespace,
            args.mode,
            outbound_tap=not args.no_outbound_tap,
            selector=selector,
            **{name: getattr(args, name) for name in passed},
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not out["objects"]:
        sys.stderr.write(
            f"meshward: mode {args.mode}: nothing to install in {args.namespace}; remove what an "
            f"earlier mode rendered with: kubectl delete envoyfilter,authorizationpolicy "
            f"-n {args.namespace} -l app.kubernetes.io/managed-by=meshward\n"
        )
    documents: list[object] = list(out["objects"])
    if "meshConfig" in out:
        fragment = {"meshConfig": out["meshConfig"]}
        if args.mesh_config:
            try:
                with open(args.mesh_config, "w") as fh:
                    fh.write(dump(fragment, args.format))
            except OSError as exc:
                raise UsageError(f"cannot write {args.mesh_config}: {exc}") from None
        else:
            documents.insert(0, fragment)
    if args.format == "json":
        sys.stdout.write(dump(documents, "json"))
        return 0
    for doc in documents:
        if isinstance(doc, dict) and "meshConfig" in doc:
            sys.stdout.write("# merge into istiod's mesh config (IstioOperator/Helm meshConfig)\n")
        sys.stdout.write("---\n" + dump(doc, "yaml"))
    return 0
