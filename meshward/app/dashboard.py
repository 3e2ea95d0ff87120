"""The dashboard's routes on serve's HTTP port, all behind `auth.Guard` like the rest:

  GET /dashboard/                      the page (esbuild bundle of dashboard/; docs/dashboard.md)
  GET /dashboard/{asset}               its script and stylesheet (a fixed set of names)
  GET /api/v1/graph[?namespace=NS][&window=S]  the service graph (meshward.app.graph)
  GET /api/v1/alerts/stream[?namespace=NS]   new alerts as server-sent events

The stream reads the alert history serve keeps (the store, so with replicas on one store any
of them shows the alerts of all), so it never holds an alert of its own: each stream polls the
newest alerts and sends those it has not sent. Streams are bounded in number and end when
serve stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshward.app.auth import SECURITY_HEADERS
from meshward.app.graph import build_graph
from meshward.core.names import is_kubernetes_name

if TYPE_CHECKING:
    from meshward.app.api import ApiServer

ASSETS = Path(__file__).parent / "static" / "dashboard"
ASSET_TYPES = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "dashboard.js.LEGAL.txt": "text/plain",  # the bundled libraries' licences
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
NOT_BUILT = (
    "meshward's dashboard is not built into this installation. From a source checkout, run "
    "`make setup` (it needs node and npm) or `make dashboard`; the API on this port works "
    "without it.\n"
)
GRAPH_ALERTS = 1000  # the newest alerts the graph counts
GRAPH_WINDOW = 3600.0  # seconds of per-edge verdict counts the graph colours by (default)
STREAM_BACKLOG = 50  # alerts a new stream starts with
STREAM_POLL = 0.5  # seconds between two looks at the alert history
STREAM_KEEPALIVE = 15.0
MAX_STREAMS = 64
_SEEN = 4096  # fingerprints of sent alerts a stream remembers


class Streams:
    """The open alert streams: counted, bounded, and told to end when serve stops."""

    def __init__(self, most: int = MAX_STREAMS) -> None:
        self.most = most
        self.open = 0
        self.stopping = asyncio.Event()

    async def stop(self, app: web.Application) -> None:
        self.stopping.set()


STREAMS_KEY: web.AppKey[Streams] = web.AppKey("alert-streams", Streams)


def _server(request: web.Request) -> ApiServer:
    from meshward.app.api import SERVER_KEY

    return request.app[SERVER_KEY]


def _namespace(request: web.Request) -> str:
    ns = request.query.get("namespace", "")
    if ns and not is_kubernetes_name(ns):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "namespace must be a Kubernetes name"}),
            content_type="application/json",
        )
    return ns


def _window(request: web.Request) -> float:
    raw = request.query.get("window", "")
    try:
        window = float(raw) if raw else GRAPH_WINDOW
    except ValueError:
        window = -1.0
    if not 60 <= window <= 30 * 86400:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "window must be seconds, 60 to 2592000"}),
            content_type="application/json",
        )
    return window


async def page(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("asset") or "index.html"
    kind = ASSET_TYPES.get(name)
    if kind is None:
        raise web.HTTPNotFound(text="no such dashboard file\n")
    path = ASSETS / name
    try:
        body = await asyncio.to_thread(path.read_bytes)
    except OSError:
        raise web.HTTPServiceUnavailable(text=NOT_BUILT) from None
    headers = {"Content-Security-Policy": CSP} if name == "index.html" else {}
    return web.Response(body=body, content_type=kind, charset="utf-8", headers=headers)


async def graph(request: web.Request) -> web.Response:
    server = _server(request)
    namespace = _namespace(request)
    engine = server.engine
    window = _window(request)
    found = await server.alerts(GRAPH_ALERTS, None)
    verdicts = await server.edges(time.time() - window, None, None)
    doc = build_graph(
        engine.allowlist.export_doc(),
        found,
        engine.modes(),
        engine.default_mode,
        namespace,
        verdicts,
        server.pipeline.control_plane.components,
    )
    doc["alerts_counted"] = len(found)
    doc["window_seconds"] = window
    return web.json_response(doc, dumps=lambda o: json.dumps(o, default=str))


STORE_KEYS = frozenset({"id", "replica"})  # what a store adds to an alert it has written


def _fingerprint(alert: dict[str, Any]) -> str:
    """One alert's identity, the same before its store wrote it (pending) and after (with the
    store's row id): else the stream sent each alert twice, once from each."""
    shown = {k: v for k, v in alert.items() if k not in STORE_KEYS}
    raw = json.dumps(shown, sort_keys=True, default=str).encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


async def alert_stream(request: web.Request) -> web.StreamResponse:
    """text/event-stream: `event: alert` with one alert's JSON per new alert, oldest first."""
    server = _server(request)
    streams = request.app[STREAMS_KEY]
    namespace = _namespace(request) or None
    if streams.open >= streams.most:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": "too many alert streams open"}),
            content_type="application/json",
        )
    streams.open += 1
    try:
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        sent: deque[str] = deque(maxlen=_SEEN)
        known: set[str] = set()
        first, quiet = True, 0.0
        while not streams.stopping.is_set():
            found = await server.alerts(STREAM_BACKLOG if first else 200, namespace)
            new = []
            for alert in found:  # newest first
                fp = _fingerprint(alert)
                if fp in known:
                    continue
                new.append(alert)
                if len(sent) == sent.maxlen:
                    known.discard(sent[0])
                sent.append(fp)
                known.add(fp)
            for alert in reversed(new):
                data = json.dumps(alert, default=str)
                await response.write(f"event: alert\ndata: {data}\n\n".encode())
            if first:
                await response.write(b"event: ready\ndata: {}\n\n")
                first = False
            quiet = 0.0 if new else quiet + STREAM_POLL
            if quiet >= STREAM_KEEPALIVE:
                await response.write(b": keepalive\n\n")
                quiet = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(streams.stopping.wait(), STREAM_POLL)
        return response
    finally:
        streams.open -= 1


def install(app: web.Application) -> None:
    streams = Streams()
    app[STREAMS_KEY] = streams
    app.on_shutdown.append(streams.stop)
    app.router.add_get("/dashboard/", page)
    app.router.add_get("/dashboard/{asset}", page)
    app.router.add_get("/api/v1/graph", graph)
    app.router.add_get("/api/v1/alerts/stream", alert_stream)
