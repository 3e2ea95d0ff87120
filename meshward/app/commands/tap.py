"""`meshward tap envoy-admin`: read an Envoy admin /tap stream as Observations.

Without `--serve` the observations go to stdout as JSON Lines (`observation_to_dict`); with
`--serve URL` they are posted in batches to a running `meshward serve` (/api/v1/observations)
with its API token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from urllib.parse import urlparse

from meshward.app.commands import UsageError
from meshward.core.log import event
from meshward.core.observation import Observation, observation_to_dict
from meshward.runtime.client import ApiClient, ApiError

log = logging.getLogger("meshward.tap")
BATCH = 200
BATCH_SECONDS = 0.5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("tap", help="read observations from an Envoy tap")
    sub = p.add_subparsers(dest="tap_command", metavar="SOURCE")
    sub.required = True
    a = sub.add_parser(
        "envoy-admin",
        help="stream Envoy's admin /tap endpoint",
        description="POST a tap config to Envoy's admin /tap for the tap filter whose "
        "admin_config has CONFIG_ID and turn each streamed trace into an Observation.",
    )
    a.add_argument("--admin", required=True, help="Envoy admin URL, e.g. http://127.0.0.1:15000")
    a.add_argument("--config-id", required=True, help="the tap filter's admin_config config_id")
    a.add_argument("--serve", help="meshward serve HTTP URL to post to (default: print JSON Lines)")
    a.add_argument(
        "--api-token-file",
        help="file holding serve's API token (default: env MESHWARD_API_TOKEN, or the file named "
        "by MESHWARD_API_TOKEN_FILE)",
    )
    a.add_argument("--namespace", default="", help="destination namespace of the tapped sidecar")
    a.add_argument("--workload", default="", help="destination workload of the tapped sidecar")
    a.add_argument("--max-body", type=int, default=64 * 1024, help="body bytes per trace")
    a.add_argument("--count", type=int, default=0, help="stop after N observations (0: never)")
    a.add_argument("--duration", type=float, default=0, help="stop after S seconds (0: never)")
    a.set_defaults(func=run_admin)


def _url(text: str, what: str) -> str:
    u = urlparse(text)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise UsageError(f"{what} must be an http(s) URL, got {text!r}")
    return text.rstrip("/")


def run_admin(args: argparse.Namespace) -> int:
    from meshward.runtime import jsonlog as mlog

    mlog.setup("info")
    admin = _url(args.admin, "--admin")
    serve = _url(args.serve, "--serve") if args.serve else None
    if not args.config_id.strip():
        raise UsageError("--config-id must not be empty")
    if args.count < 0 or args.duration < 0 or args.max_body < 0:
        raise UsageError("--count, --duration and --max-body must be >= 0")
    from meshward.tap.envoy.admin import AdminTapError

    try:
        asyncio.run(_run(args, admin, serve))
    except AdminTapError as exc:
        raise UsageError(str(exc)) from None
    return 0


async def _run(args: argparse.Namespace, admin: str, serve: str | None) -> None:
    # here, not at the top: every other command would pay aiohttp's 0.13 s import at start
    import aiohttp

    from meshward.tap.envoy.admin import TapStats, stream_observations

    stats = TapStats()
    batch: list[dict[str, object]] = []
    last = time.monotonic()
    seen = 0
    client = ApiClient.configured(serve, args.api_token_file) if serve else None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def ship() -> None:
            nonlocal batch, last
            last = time.monotonic()
            if not batch:
                return
            items, batch = batch, []
            if serve is None:
                sys.stdout.write("".join(json.dumps(i) + "\n" for i in items))
                sys.stdout.flush()
                return
            assert client is not None
            try:
                answer = await asyncio.to_thread(client.post_observations, items)
            except ApiError as exc:
                event(
                    log,
                    "ingest failed, batch dropped",
                    logging.WARNING,
                    status=exc.status,
                    error=str(exc),
                    dropped=len(items),
                )
                return
            if answer.get("rejected"):
                event(log, "ingest rejected some", logging.WARNING, **answer)

        async def consume() -> None:
            nonlocal seen
            async for obs in stream_observations(
                admin, args.config_id, max_body=args.max_body, stats=stats, session=session
            ):
                _place(obs, args.namespace, args.workload)
                batch.append(observation_to_dict(obs))
                seen += 1
                if args.count and seen >= args.count:
                    return
                if len(batch) >= BATCH or time.monotonic() - last >= BATCH_SECONDS:
                    await ship()

        event(log, "tapping", admin=admin, config_id=args.config_id, serve=serve or "stdout")
        try:
            if args.duration:
                await asyncio.wait_for(consume(), args.duration)
            else:
                await consume()
        except TimeoutError:
            pass
        finally:
            await ship()
    event(log, "tap done", traces=stats.traces, observations=stats.observations, bad=stats.bad)


def _place(obs: Observation, namespace: str, workload: str) -> None:
    """The tapped sidecar guards namespace/workload: that is the destination of what it sees."""
    if namespace:
        obs.destination.namespace = namespace
    if workload:
        obs.destination.workload = workload
