"""`POST /api/v1/findings`: the controller's mesh guard findings, kept by serve as alerts, so the
dashboard, `GET /api/v1/alerts` and the alert stream show them with the request alerts.

Who may call it: the route's permission is `create findings.meshward.io` (meshward.app.auth), which
the install grants to the controller's ServiceAccount only; standalone, the API token holder.
A finding names a configuration change, never a request, so serve does not judge it: it checks
each one (meshward.core.meshguard.Finding.from_dict: one of the guard's threat names, short
printable strings) and stores it; anything else is rejected and counted. The alert's source is
the user that made the change (the API server's audit log, docs/mesh-guard.md), else its field
manager, its destination the changed object (`ns/Kind/name`), its
method and path the kind and the field, its threat's evidence `old → new`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from meshward.app.ingest import loads
from meshward.core import redact
from meshward.core.engine import Engine
from meshward.core.meshguard import Finding
from meshward.core.observation import Threat

MAX_BODY = 1 << 20
MAX_FINDINGS = 500  # per call
SEEN_BY = "mesh-guard"
REASON = "mesh-config"


def _bad(msg: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": msg}), content_type="application/json")


def alert_of(f: Finding, engine: Engine, now: float) -> dict[str, Any]:
    """The alert a finding becomes."""
    # the namespace it weakens when that is one (a DestinationRule elsewhere toward it), else the
    # object's (mesh-wide ones: Istio's root namespace); a Namespace's findings are about itself
    namespace = f.affects[0] if len(f.affects) == 1 else f.namespace or f.name
    evidence = f"{f.old} → {f.new}"
    return {
        "verdict": "alert",
        "score": 1.0,
        "reasons": [REASON],
        "threats": redact.shown_threats([Threat(f.threat, f.field, evidence[:400])]),
        "destination": f"{f.namespace or f.name}/{f.kind}/{f.name}",
        # the user, from the API server's audit log where one is configured; else the manager
        "source": f.user or f.by.partition(" (")[0] or "unknown",
        "rule": "",
        "mode": engine.mode_of(namespace),
        "time": now,
        "namespace": namespace,
        "method": f.kind,
        "path": f.field,
        "seen_by": SEEN_BY,
        "protocol": "kubernetes",
        "request_id": "",
        "guard": f.as_dict(),
    }


async def findings(request: web.Request) -> web.Response:
    from meshward.app.api import SERVER_KEY

    server = request.app[SERVER_KEY]
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    raw = await request.read()  # whole (content.read(n) may stop at a part), serve's bound
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))
    try:
        doc = loads(raw)
    except ValueError:
        raise _bad("body must be a JSON array of findings") from None
    if not isinstance(doc, list) or len(doc) > MAX_FINDINGS:
        raise _bad(f"body must be a JSON array of at most {MAX_FINDINGS} findings")
    accepted = rejected = 0
    now = time.time()
    for index, item in enumerate(doc):
        try:
            finding = Finding.from_dict(item)
        except ValueError as exc:
            rejected += 1
            server.problems("findings", "bad-finding", error=str(exc)[:200], index=index)
            continue
        if finding.cleared:  # a change back is the Event's; the alert history keeps alerts
            continue
        if server.engine.add_alert(alert_of(finding, server.engine, now)):
            accepted += 1
        else:
            rejected += 1
    if rejected:
        server.metrics.drops.labels("findings", "rejected").inc(rejected)
    return web.json_response({"accepted": accepted, "rejected": rejected}, status=202)


def install(app: web.Application) -> None:
    app.router.add_post("/api/v1/findings", findings)
