"""`meshward alerts`: the newest alerts, from a store (`--db`) or a running serve (`--url`).

A table on a terminal (time, verdict, who called whom, the request, why), JSON Lines in a pipe
(the stored alert documents, as `GET /api/v1/alerts` serves them). Read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlencode

from meshward.app.commands import UsageError, plural, utc
from meshward.app.commands.offline import add_db_flag, store_for
from meshward.core.names import is_kubernetes_name

MOST = 1000  # the API's own cap on one read


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "alerts",
        help="the newest alerts: a table on a terminal, JSON Lines otherwise",
        description="The newest alerts first, from the SQLite store (--db) or from a running "
        "serve's API (--url with --api-token-file). Read-only.",
    )
    p.add_argument("--namespace", metavar="NS", help="only this destination namespace")
    p.add_argument("--limit", type=int, default=20, metavar="N", help=f"at most N (20; {MOST})")
    add_db_flag(p)
    p.add_argument("--url", help="a running serve's HTTP URL instead of a store")
    p.add_argument(
        "--api-token-file",
        help="with --url: the file holding the API token (default: env MESHWARD_API_TOKEN or "
        "MESHWARD_API_TOKEN_FILE)",
    )
    p.set_defaults(func=run)


def _read(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.url:
        from meshward.runtime.client import ApiClient, ApiError

        query = {"limit": args.limit, **({"namespace": args.namespace} if args.namespace else {})}
        client = ApiClient.configured(args.url, args.api_token_file)
        try:
            doc = client.request("GET", f"/api/v1/alerts?{urlencode(query)}")
        except ApiError as exc:
            raise UsageError(f"cannot read the alerts: {exc}") from None
        found = doc.get("alerts") if isinstance(doc, dict) else None
        return [a for a in found if isinstance(a, dict)] if isinstance(found, list) else []
    with store_for(args.db, create=False) as store:
        return store.alerts(args.limit, args.namespace)


def why(alert: dict[str, Any]) -> str:
    """The threats found, then the reasons: what made it an alert."""
    names = [str(t.get("name", "")) for t in alert.get("threats", []) if isinstance(t, dict)]
    return ", ".join(dict.fromkeys(names + [str(r) for r in alert.get("reasons", [])]))


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MOST:
        raise UsageError(f"--limit must be 1..{MOST}")
    if args.namespace and not is_kubernetes_name(args.namespace):
        raise UsageError(f"{args.namespace!r} is not a Kubernetes namespace name")
    if args.api_token_file and not args.url:
        raise UsageError("--api-token-file goes with --url")
    found = _read(args)
    if not sys.stdout.isatty():
        for a in found:
            sys.stdout.write(json.dumps(a, default=str) + "\n")
        return 0
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    console.print(f"meshward alerts: the newest {plural(len(found), 'alert')}, newest first")
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("request", overflow="fold", ratio=3)
    table.add_column("why", overflow="fold", ratio=2)
    for a in found:
        verdict = str(a.get("verdict", ""))
        call = f"{a.get('method', '')} {a.get('path', '')}"
        who = f"{a.get('source', '')} -> {a.get('destination', '')}"
        request = f"{escape(call)}\n  [dim]{escape(who)}[/]"
        table.add_row(
            utc(a.get("time"), "%Y-%m-%d\n%H:%M:%S"),  # two short lines
            f"[red]{verdict}[/]" if verdict == "deny" else escape(verdict),
            request,
            escape(why(a)),
        )
    console.print(table)
    return 0
