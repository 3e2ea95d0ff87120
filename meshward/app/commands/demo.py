"""`meshward demo`: the live mini-mesh (the README's main command)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from meshward.app.commands import UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from meshward.app.demo.run import Outcome, Running


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
    p.add_argument(
        "--learn-requests",
        type=int,
        default=400,
        metavar="N",
        help="normal requests to learn (400)",
    )
    p.add_argument(
        "--replay-requests",
        type=int,
        default=150,
        metavar="N",
        help="normal requests in enforce (150)",
    )
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="requests in flight (8)")
    p.add_argument("--seed", type=int, default=7, metavar="N", help="traffic generator seed (7)")
    p.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    p.add_argument(
        "--write-har",
        metavar="DIR",
        help="only write the shop's traffic as DIR/normal.har and DIR/suspicious.har (no mesh "
        "is started): recorded traffic for `meshward learn` and `meshward score`",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the summary, keep the shop, its sidecars and serve up to explore the "
        "dashboard (a login link is printed); Ctrl-C stops everything the demo started",
    )
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
    if args.write_har:
        return write_har(args)
    log.setup("warning")
    config = DemoConfig(args.learn_requests, args.replay_requests, args.concurrency, args.seed)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough that the tables stay readable
        console = Console(width=120)

    def save(outcome: Outcome) -> None:
        if args.summary_json:
            with open(args.summary_json, "w") as fh:
                json.dump(outcome.as_dict(), fh, indent=2)

    async def hold(outcome: Outcome, running: Running) -> None:
        print_summary(outcome, console)
        save(outcome)
        show_next_steps(running, console)
        await until_stopped()
        console.print("stopping the shop, its sidecars and meshward serve")

    try:
        outcome = asyncio.run(run_demo(config, console, hold if args.keep_running else None))
    except (DemoError, EnvoyError, CertError) as exc:
        console.print(f"[bold red]DEMO FAILED[/]: {exc}")
        return 1
    if not outcome.held:
        print_summary(outcome, console)
        save(outcome)
    return 0 if not outcome.failures else 1


def write_har(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meshward.app.demo.har import write_hars

    try:
        written = write_hars(Path(args.write_har), args.learn_requests, args.seed)
    except OSError as exc:
        raise UsageError(f"{args.write_har}: {exc.strerror or exc}") from None
    for path, n in written.items():
        print(f"wrote {path} ({n} requests)")
    normal, suspicious = written
    print(
        f"next: meshward learn {normal} --db shop.db && meshward mode set shop enforce --db "
        f"shop.db && meshward score {suspicious} --db shop.db"
    )
    return 0


def show_next_steps(running: Running, console: Console) -> None:
    from meshward.app.commands.dashboard import login_link
    from meshward.app.demo.run import next_steps
    from meshward.runtime.client import ApiClient

    try:
        login = login_link(running.url, ApiClient(running.url, token_file=str(running.token_file)))
    except UsageError as exc:
        login = f"{running.url}  ({exc}; use the command below)"
    console.print("[bold]the demo keeps running: try these (Ctrl-C stops everything it started)")
    width = max(len(what) for what, _ in next_steps(running, login)) + 2
    for what, how in next_steps(running, login):
        # never wrapped: each command stays one line to copy
        console.print(f"  {what:<{width}}{how}", soft_wrap=True, markup=False, highlight=False)


async def until_stopped() -> None:
    """Until Ctrl-C (or SIGTERM): then the demo's own cleanup runs, and it exits 0."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
