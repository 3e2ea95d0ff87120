"""`meshward demo`: the live mini-mesh (the README's main command)."""

from __future__ import annotations

import argparse
import json

from meshward.app.commands import UsageError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a sample shop behind real Envoy sidecars: learn, enforce, attack, summarise",
        description="Starts meshward serve and a 4-service shop (HTTP/JSON and gRPC), each behind "
        "its own Envoy sidecar with mTLS; learns from normal traffic, switches the namespace to "
        "enforce, replays normal traffic (all allowed), then attacks and novel calls (all denied "
        "with 403). The sidecars follow the mode as an install does: learn renders the tap only; "
        "on the switch meshward's mode changes and the sidecars are re-rendered with ext_authz "
        "(failing closed), as re-applying `meshward istio render` would (Istio pushes that over "
        "xDS; here each sidecar restarts on its port). Exit 0 only when all of that happened; "
        "every process is stopped at the end.",
    )
    p.add_argument("--learn-requests", type=int, default=400, help="normal requests to learn from")
    p.add_argument("--replay-requests", type=int, default=150, help="normal requests in enforce")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    p.add_argument("--seed", type=int, default=7, help="traffic generator seed")
    p.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from rich.console import Console

    from meshward.app.demo.mesh import DemoError
    from meshward.app.demo.run import DemoConfig, print_summary, run_demo
    from meshward.istio.certs import CertError
    from meshward.istio.envoyproc import EnvoyError
    from meshward.runtime import jsonlog as log

    if args.learn_requests < 50 or args.replay_requests < 1 or args.concurrency < 1:
        raise UsageError("need --learn-requests >= 50, --replay-requests >= 1, --concurrency >= 1")
    log.setup("warning")
    config = DemoConfig(args.learn_requests, args.replay_requests, args.concurrency, args.seed)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough that the tables stay readable
        console = Console(width=120)
    try:
        outcome = asyncio.run(run_demo(config, console))
    except (DemoError, EnvoyError, CertError) as exc:
        console.print(f"[bold red]DEMO FAILED[/]: {exc}")
        return 1
    print_summary(outcome, console)
    if args.summary_json:
        with open(args.summary_json, "w") as fh:
            json.dump(outcome.as_dict(), fh, indent=2)
    return 0 if not outcome.failures else 1
