"""`meshward mode readiness NAMESPACE [--har FILE]`: what NAMESPACE's traffic would get in
enforce (or `--mode`) with the allowlist as it is now, by service and reason.

It asks a running `meshward serve` (`GET /api/v1/readiness/NS`: the recent calls serve kept,
or `POST` with `--har`: a recorded HAR's requests), the report the dashboard shows before a
mode switch. Read-only: nothing is learned or alerted by the replay.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from meshward.app.commands import UsageError
from meshward.core.modes import MODES
from meshward.core.names import is_kubernetes_name
from meshward.runtime.client import ApiClient, ApiError

DEFAULT_URL = "http://127.0.0.1:9193"


def register(actions: argparse._SubParsersAction) -> None:
    """`readiness` under `meshward mode` (meshward.app.commands.mode)."""
    p = actions.add_parser(
        "readiness",
        help="what a namespace's recent traffic (or a HAR) would get in enforce, before a switch",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("namespace", metavar="NAMESPACE")
    p.add_argument("--mode", choices=MODES, default="enforce", help="the mode to try (enforce)")
    p.add_argument("--har", metavar="FILE", help="replay this HAR 1.2 file, not recent calls")
    p.add_argument("--since", help="recent calls since (15m, 2h, 7d; default 24h)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"serve's HTTP URL (default {DEFAULT_URL})")
    p.add_argument(
        "--api-token-file",
        help="file holding the API token (default: env MESHWARD_API_TOKEN or "
        "MESHWARD_API_TOKEN_FILE)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not is_kubernetes_name(args.namespace):
        raise UsageError(f"{args.namespace!r} is not a Kubernetes namespace name")
    har = None
    if args.har:
        try:
            with open(args.har, "rb") as f:
                har = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read {args.har}: {exc.strerror or exc}") from None
    client = ApiClient.configured(args.url, args.api_token_file)
    try:
        report = client.readiness(args.namespace, args.mode, har, since=args.since)
    except ApiError as exc:
        raise UsageError(f"cannot get the readiness report: {exc}") from None
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        print("\n".join(lines(report)))
    return 0


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def lines(report: dict[str, Any]) -> list[str]:
    """The report for a terminal: the totals, then each service with a deny or an alert."""
    ns, mode = report["namespace"], report["mode"]
    if report["from"] == "har":
        h = report["har"]
        origin = (
            f"{report['calls']} requests of the HAR "
            f"({h['outside_namespace']} to other namespaces, {h['bad_entries']} bad)"
        )
    else:
        origin = (
            f"{report['calls']} recent calls ({report['shapes']} kinds) "
            f"since {_when(report['since'])}"
        )
    out = [
        f"{ns}: as {mode} (now {report['mode_now']}), from {origin}",
        f"  would deny {report['would_deny']}, would alert {report['would_alert']}",
    ]
    for s in report["services"]:
        if not s["would_deny"] and not s["would_alert"]:
            continue
        why = ", ".join(f"{r['reason']} {r['calls']}" for r in s["reasons"][:4])
        out.append(
            f"  {s['service']}: {s['would_deny']} denied, {s['would_alert']} alerted "
            f"of {s['calls']} ({why})"
        )
        for e in s["examples"]:
            reasons = ", ".join(e["reasons"])
            out.append(
                f"    {e['method']} {e['path']} from {e['source']}: {e['calls']} ({reasons})"
            )
    if report.get("bodies_not_kept"):
        out.append(
            f"  {report['bodies_not_kept']} calls replayed without their body "
            "(not JSON or a form, or over 16 KiB)"
        )
    switch = report["switch"]
    how = (
        "in this cluster the mode is the Namespace label"
        if switch["by"] == "label"
        else "to switch"
    )
    out.append(f"{how}: {switch['command']}")
    return out
