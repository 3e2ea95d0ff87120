"""The HTTP side of `meshward serve` (aiohttp): JSON API, Prometheus /metrics, health probes.

Routes:
  GET  /healthz, /readyz, /metrics
  GET  /api/v1/alerts?limit=N[&namespace=NS]   {"alerts": [...]} newest first (store history)
  GET  /api/v1/edges?since=15m[&until=T][&namespace=NS]  verdicts per caller -> destination
                                       per 60 s bucket {"bucket_seconds", "edges": [...]}
  GET  /api/v1/allowlist[?destination=ns/name]   the allowlist document {"version", "services"}
  GET  /api/v1/modes                   {"default": mode, "modes": {namespace: mode}}
  PUT  /api/v1/modes/{namespace}       body {"mode": "enforce"}; takes effect at once (`*`: every
                                       namespace not set by name)
  POST /api/v1/observations            JSON array or JSON Lines of observation dicts -> 202
                                       {"accepted": n, "rejected": m}
  GET  /api/v1/exchanges?limit=N       both-ends joined calls that mismatched or alerted
  POST /api/v1/findings                the controller's mesh guard findings -> alerts
                                       (meshward.app.findingsapi)
  GET  /api/v1/graph, /api/v1/alerts/stream, /dashboard/   the dashboard (meshward.app.dashboard)
  GET|POST /api/v1/readiness/{namespace}   the enforce-readiness report (meshward.app.readiness)
  GET  /api/v1/exports/{format}[?destination=ns/name]   native policy (meshward.app.exportapi)
  GET|POST /api/v1/review?destination=ns/name   the allowlist review (meshward.app.reviewapi)
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from meshward.app import dashboard, exportapi, findingsapi, readiness, reviewapi
from meshward.app.audit import AuditLog
from meshward.app.auth import Guard, principal_of
from meshward.app.batchapply import BatchDoor
from meshward.app.callerip import PodsByIp
from meshward.app.cpedges import ControlPlaneConnections
from meshward.app.ingest import Ingestor, Parsed, loads
from meshward.app.nodescope import NodeScope, ScopeError
from meshward.app.recent import RecentCalls
from meshward.core.edges import BUCKET_SECONDS
from meshward.core.engine import Engine, Prepared
from meshward.core.modes import MODES, settable
from meshward.core.observation import Observation
from meshward.extauthz.service import CheckService
from meshward.runtime.metrics import CONTENT_TYPE, Metrics, Problems
from meshward.tap.envoy.join import Joiner

if TYPE_CHECKING:
    from meshward.app.flusher import Flusher
    from meshward.app.kubestore import KubeStore


class Ingest(Protocol):
    @property
    def recent(self) -> RecentCalls: ...
    def take_ingested(self, obs: Observation, prepared: Prepared | None = None) -> None: ...
    def take_tap(self, obs: Observation, prepared: Prepared | None = None) -> None: ...
    @property
    def control_plane(self) -> ControlPlaneConnections: ...
    @property
    def pods(self) -> PodsByIp | None: ...


class ApiConfig(Protocol):
    @property
    def max_ingest_bytes(self) -> int: ...
    @property
    def modes_from_labels(self) -> bool: ...


class ApiServer(Protocol):
    """What the API reads and drives of `meshward serve` (meshward.app.serve.Server): typed
    here so that this module needs nothing from serve, which builds it."""

    @property
    def config(self) -> ApiConfig: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def problems(self) -> Problems: ...
    @property
    def pipeline(self) -> Ingest: ...
    @property
    def ingestor(self) -> Ingestor: ...
    @property
    def check(self) -> CheckService: ...  # its last_check: ingest yields to Checks
    @property
    def joiner(self) -> Joiner: ...
    @property
    def guard(self) -> Guard: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def node_scope(self) -> NodeScope | None: ...
    @property
    def flusher(self) -> Flusher | None: ...  # the review's edits (meshward.app.reviewapi)
    @property
    def cluster(self) -> KubeStore | None: ...
    def status(self) -> dict[str, Any]: ...
    def mode_changed(self) -> None: ...
    async def alerts(
        self, limit: int = 100, namespace: str | None = None
    ) -> list[dict[str, Any]]: ...
    async def set_mode(self, namespace: str, mode: str) -> None: ...
    async def edges(
        self, since: float, until: float | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]: ...


MODE_IS_LABEL = (
    "in a cluster a namespace's mode is its label: kubectl label namespace NAMESPACE "
    "meshward.io/mode=MODE --overwrite (who may do that is decided by RBAC on namespaces; "
    "meshward serve cannot change it)"
)
SERVER_KEY: web.AppKey[ApiServer] = web.AppKey("server")


def _limit(request: web.Request, default: int = 100, most: int = 1000) -> int:
    raw = request.query.get("limit", str(default))
    try:
        n = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=_error("limit must be an integer")) from None
    return max(0, min(n, most))


def _error(msg: str) -> str:
    return json.dumps({"error": msg})


def _bad(msg: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=_error(msg), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    status = server.status()
    return web.json_response(status, status=200 if status["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVER_KEY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def alerts(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    found = await server.alerts(_limit(request), request.query.get("namespace") or None)
    return web.json_response({"alerts": found}, dumps=_dumps)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(request: web.Request, name: str, default: float | None) -> float | None:
    """A time parameter: epoch seconds, or a duration back from now (`15m`, `2h`, `7d`)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        if raw[-1] in _UNITS:
            return time.time() - float(raw[:-1]) * _UNITS[raw[-1]]
        value = float(raw)
    except ValueError:
        raise _bad(f"{name} must be epoch seconds or a duration like 15m, 2h, 7d") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _bad(f"{name} must be a finite number")
    return value


async def edges(request: web.Request) -> web.Response:
    """Verdict counts per caller -> destination and time bucket (the dashboard's graph)."""
    server = request.app[SERVER_KEY]
    since = _when(request, "since", time.time() - 3600)
    assert since is not None
    until = _when(request, "until", None)
    namespace = request.query.get("namespace") or None
    found = await server.edges(since, until, namespace)
    return web.json_response({"bucket_seconds": BUCKET_SECONDS, "edges": found}, dumps=_dumps)


async def allowlist(request: web.Request) -> web.Response:
    engine = request.app[SERVER_KEY].engine
    doc = engine.allowlist.export_doc()
    wanted = request.query.get("destination")
    if wanted:
        doc["services"] = [s for s in doc["services"] if s.get("destination") == wanted]
    return web.json_response(doc, dumps=_dumps)


async def modes(request: web.Request) -> web.Response:
    engine = request.app[SERVER_KEY].engine
    return web.json_response({"default": engine.default_mode, "modes": engine.modes()})


async def set_mode(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    namespace = request.match_info["namespace"]
    if server.config.modes_from_labels:
        raise web.HTTPConflict(text=_error(MODE_IS_LABEL), content_type="application/json")
    if not settable(namespace):
        raise _bad(
            "namespace must be a Kubernetes name (a DNS label, at most 63 characters) "
            "or * (every namespace not set by name)"
        )
    try:  # the bytes, not request.json(): an unknown charset in the content type raised there
        doc = loads(await request.read())
    except ValueError:
        raise _bad('body must be JSON like {"mode": "enforce"}') from None
    mode = doc.get("mode") if isinstance(doc, dict) else None
    if mode not in MODES:
        raise _bad(f"mode must be one of {', '.join(MODES)}")
    old = server.engine.mode_of(namespace)
    await server.set_mode(namespace, mode)
    server.mode_changed()
    who = principal_of(request)
    await asyncio.to_thread(
        server.audit.record,
        "mode.set",
        who.name if who else "",
        namespace,
        old,
        mode,
        via=who.via if who else "",
        peer=request.remote or "",
    )
    return web.json_response({"namespace": namespace, "mode": mode, "was": old})


async def _read(request: web.Request, most: int) -> list[bytes]:
    """The body in chunks, yielding to Checks between them: `request.read()` takes all the bytes
    that have arrived without yielding, and 16 MB on loopback arrive at once (about 100 ms
    held). Never joined here: one 16 MB copy is milliseconds with the GIL held."""
    if request.content_length is not None and request.content_length > most:
        raise web.HTTPRequestEntityTooLarge(max_size=most, actual_size=request.content_length)
    parts, size = [], 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > most:
            raise web.HTTPRequestEntityTooLarge(max_size=most, actual_size=size)
        parts.append(chunk)
        await asyncio.sleep(0)
    return parts


def _node_of(request: web.Request, server: ApiServer) -> str:
    """In a cluster, the node the calling node tap speaks for (see meshward.app.nodescope);
    "" standalone, where the token holder is the operator."""
    if server.node_scope is None:
        return ""
    try:
        return server.node_scope.node_of(principal_of(request))
    except ScopeError as exc:
        server.metrics.drops.labels("ingest", "no-node").inc()
        answer = web.HTTPServiceUnavailable if exc.status == 503 else web.HTTPForbidden
        raise answer(text=_error(str(exc)), content_type="application/json") from None


async def observations(request: web.Request) -> web.Response:
    """Parsed, inspected and judged in the ingest worker process, serve's loop deciding what
    needs its state and adding the results (meshward/app/ingest.py, batchjudge.py,
    batchapply.py); envoy-tap items, and every item when the worker cannot rebuild serve's
    detector, judged on the loop in slices that yield to Checks."""
    server = request.app[SERVER_KEY]
    node = _node_of(request, server)
    outside = 0
    try:
        raw = await _read(request, server.config.max_ingest_bytes)
    except web.HTTPRequestEntityTooLarge:
        server.metrics.drops.labels("ingest", "too-large").inc()
        raise
    pipeline = server.pipeline
    door = BatchDoor(
        server.engine, server.metrics, server.joiner, pipeline, server.node_scope, node
    )
    try:
        parsed, judged = await server.ingestor.ingest(raw, door)
    except BrokenProcessPool:
        server.problems("ingest", "worker-died")
        raise web.HTTPServiceUnavailable(
            text=_error("the ingest worker stopped; send the batch again"),
            content_type="application/json",
        ) from None
    rejected = parsed.not_json + parsed.too_many + parsed.bad_count
    if parsed.not_json:
        server.problems("ingest", "not-json", lines=parsed.not_json)
    if parsed.too_many:
        server.metrics.drops.labels("ingest", "too-many-items").inc(parsed.too_many)
    for index, error in parsed.bad:
        server.problems("ingest", "bad-observation", error=error, index=index)
    failures = 0

    def take(obs: Observation, prepared: Prepared | None) -> bool:
        nonlocal outside
        if node and server.node_scope is not None and not server.node_scope.allows(obs, node):
            outside += 1  # a node tap speaks only for pods on its own node
            return False
        server.pipeline.take_ingested(obs, prepared)
        return True

    def judge_failed(index: int, exc: Exception) -> None:
        nonlocal failures
        failures += 1
        server.problems("ingest", "judge-failed", error=repr(exc)[:200], index=index)

    def take_tap(obs: Observation, prepared: Prepared | None) -> bool:
        pipeline.take_tap(obs, prepared)
        return True

    if judged is None:  # serve's detector is its own: judged here
        accepted = await server.ingestor.judge(parsed, take, judge_failed)
    else:
        outside, accepted, failures = judged.outside, judged.taken, judged.failed
        for index, error in judged.failures:
            server.problems("ingest", "judge-failed", error=error, index=index)
        if door.lost:
            server.problems("ingest", "learning-lost", destinations=door.lost[:20])
        if judged.tapped:  # the both-ends join and judged-by-Check are the loop's
            before = failures
            tapped = Parsed(chunks=judged.tapped)
            await server.ingestor.judge(tapped, take_tap, judge_failed)
            accepted -= failures - before
    rejected += failures
    if outside:
        server.metrics.drops.labels("ingest", "outside-node").inc(outside)
        who = principal_of(request)
        server.problems(
            "ingest", "outside-node", node=node, user=who.name if who else "", count=outside
        )
        rejected += outside
    if rejected:
        server.metrics.drops.labels("ingest", "rejected").inc(rejected)
    if parsed.claimed:  # ignored: serve judges (meshward.core.claims)
        server.metrics.drops.labels("ingest", "client-verdict").inc(parsed.claimed)
    answer = {"accepted": accepted, "rejected": rejected}
    if node:
        answer["outside_node"] = outside
    return web.json_response(answer, status=202)


async def exchanges(request: web.Request) -> web.Response:
    joiner = request.app[SERVER_KEY].joiner
    return web.json_response({"exchanges": joiner.recent(_limit(request))}, dumps=_dumps)


def _dumps(obj: object) -> str:
    return json.dumps(obj, default=str)


def build_app(server: ApiServer) -> web.Application:
    app = web.Application(client_max_size=server.config.max_ingest_bytes)
    app[SERVER_KEY] = server
    server.guard.install(app)  # every route but the probes needs a verified, allowed caller
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/alerts", alerts)
    app.router.add_get("/api/v1/edges", edges)
    app.router.add_get("/api/v1/allowlist", allowlist)
    app.router.add_get("/api/v1/modes", modes)
    app.router.add_put("/api/v1/modes/{namespace}", set_mode)
    app.router.add_post("/api/v1/observations", observations)
    app.router.add_get("/api/v1/exchanges", exchanges)
    findingsapi.install(app)  # the controller's mesh guard findings, kept as alerts
    dashboard.install(app)  # the page, the graph and the live alerts (meshward.app.dashboard)
    readiness.install(app)  # the enforce-readiness report (meshward.app.readiness)
    exportapi.install(app)  # the allowlist as Istio, Linkerd or OpenAPI (meshward.app.exportapi)
    reviewapi.install(app, server)  # the allowlist review (meshward.app.reviewapi)
    return app
