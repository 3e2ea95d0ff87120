"""The enforce-readiness report on serve's HTTP port: what a namespace's traffic would get in
another mode (enforce, by default) with the allowlist as it is now, by service and reason.

  GET  /api/v1/readiness/{namespace}[?mode=enforce][&since=24h]
       the recent calls serve kept (meshward.app.recent) replayed
  POST /api/v1/readiness/{namespace}[?mode=enforce]   body: a HAR 1.2 file
       the HAR's requests to that namespace replayed (the `meshward score` reader)

Nothing is learned, no alert is raised, nothing is counted (`Engine.dry_run`); the replay runs
on the loop in slices that yield, so Checks keep flowing while it runs, and one replay at a
time (others wait their turn), so many reports at once cannot take the loop over. The answer
names how a switch is made here: by the API (`meshward mode set`, the dashboard), or, in a
cluster where the mode is the Namespace label, by the `kubectl label` command it prints.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshward.core.modes import MODES
from meshward.core.names import is_kubernetes_name
from meshward.core.observation import Observation
from meshward.core.readiness import Tally
from meshward.formats.common import EntryError
from meshward.formats.har import read_har

if TYPE_CHECKING:
    from meshward.app.api import ApiServer

MAX_HAR_ENTRIES = 20_000  # requests one uploaded HAR may replay (past that: counted, left out)
SLICE_SECONDS = 0.005  # replay time between two yields to the loop
DEFAULT_SINCE = 24 * 3600.0
REPLAYING: web.AppKey[asyncio.Lock] = web.AppKey("readiness-replay", asyncio.Lock)


def _server(request: web.Request) -> ApiServer:
    from meshward.app.api import SERVER_KEY

    return request.app[SERVER_KEY]


def _bad(msg: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": msg}), content_type="application/json")


def _namespace(request: web.Request) -> str:
    ns = request.match_info["namespace"]
    if not is_kubernetes_name(ns):
        raise _bad("namespace must be a Kubernetes name (a DNS label, at most 63 characters)")
    return ns


def _mode(request: web.Request) -> str:
    mode = request.query.get("mode", "enforce")
    if mode not in MODES:
        raise _bad(f"mode must be one of {', '.join(MODES)}")
    return mode


def switch_command(namespace: str, mode: str) -> str:
    """The command that switches a namespace's mode in a cluster (its label)."""
    return f"kubectl label namespace {namespace} meshward.io/mode={mode} --overwrite"


def _switch(server: ApiServer, namespace: str, mode: str) -> dict[str, str]:
    if server.config.modes_from_labels:
        return {"by": "label", "command": switch_command(namespace, mode)}
    return {"by": "api", "command": f"meshward mode set {namespace} {mode}"}


async def replay(
    server: ApiServer, calls: Iterable[tuple[Observation, int, bool]], mode: str
) -> Tally:
    """Each (observation, calls it stands for, body kept) through `Engine.dry_run` in `mode`,
    summed up; yields to the loop every few milliseconds."""
    tally = Tally()
    engine = server.engine
    started = time.perf_counter()
    for obs, weight, body_kept in calls:
        tally.add(obs, engine.dry_run(obs, mode), weight)
        if not body_kept:
            tally.bodies_not_kept += weight
        if time.perf_counter() - started > SLICE_SECONDS:
            await asyncio.sleep(0)
            started = time.perf_counter()
    return tally


def _answer(
    server: ApiServer, namespace: str, mode: str, origin: str, tally: Tally, **more: Any
) -> web.Response:
    engine = server.engine
    doc = {
        "namespace": namespace,
        "mode": mode,
        "mode_now": engine.modes().get(namespace, engine.config.default_mode),
        "from": origin,
        **more,
        **tally.report(),
        "switch": _switch(server, namespace, mode),
    }
    return web.json_response(doc, dumps=lambda o: json.dumps(o, default=str))


async def from_recent(request: web.Request) -> web.Response:
    server = _server(request)
    namespace, mode = _namespace(request), _mode(request)
    from meshward.app.api import _when  # one parser of `since` for the API

    since = _when(request, "since", time.time() - DEFAULT_SINCE)
    assert since is not None
    kept = list(server.pipeline.recent.calls(namespace, since))
    async with request.app[REPLAYING]:
        tally = await replay(server, ((k.obs, k.calls, k.body_kept) for k in kept), mode)
    first = min((k.first for k in kept), default=None)
    recent = server.pipeline.recent
    return _answer(
        server, namespace, mode, "recent", tally,
        shapes=len(kept), since=first, skipped_over_budget=recent.skipped,
    )  # fmt: skip


def _read_har(raw: bytes, namespace: str) -> tuple[list[Observation], dict[str, int]]:
    """The HAR's requests to `namespace` (off the loop: the reader streams, but parses)."""
    found: list[Observation] = []
    counts = {"entries": 0, "bad_entries": 0, "outside_namespace": 0, "left_out": 0}
    for item in read_har("upload.har", io.BytesIO(raw)):
        if isinstance(item, EntryError):
            counts["bad_entries"] += 1
            continue
        counts["entries"] += 1
        if (item.destination.namespace or "default") != namespace:
            counts["outside_namespace"] += 1
        elif len(found) >= MAX_HAR_ENTRIES:
            counts["left_out"] += 1
        else:
            found.append(item)
    return found, counts


async def from_har(request: web.Request) -> web.Response:
    server = _server(request)
    namespace, mode = _namespace(request), _mode(request)
    most = server.config.max_ingest_bytes
    if request.content_length is not None and request.content_length > most:
        raise web.HTTPRequestEntityTooLarge(max_size=most, actual_size=request.content_length)
    raw = await request.read()  # client_max_size (the same bound) refuses a longer body
    found, counts = await asyncio.to_thread(_read_har, raw, namespace)
    if counts["entries"] == 0:
        raise _bad("no request in the upload: send a HAR 1.2 file (log.entries)")
    async with request.app[REPLAYING]:
        tally = await replay(server, ((obs, 1, True) for obs in found), mode)
    return _answer(server, namespace, mode, "har", tally, har=counts)


def install(app: web.Application) -> None:
    app[REPLAYING] = asyncio.Lock()
    app.router.add_get("/api/v1/readiness/{namespace}", from_recent)
    app.router.add_post("/api/v1/readiness/{namespace}", from_har)
