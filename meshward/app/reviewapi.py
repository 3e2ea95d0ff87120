"""The allowlist review API (docs/review.md): a person reviews what was learned, service by
service, and approves, widens, edits or removes rules.

Routes (authorization: meshward.app.auth's table, namespaced by the destination):
  GET  /api/v1/review[?destination=ns/name]   {"services": [view...], "second_look": {...}}
  POST /api/v1/review?destination=ns/name     one edit, as JSON:
       {"action": "approve"[, "rules": [{"method", "path"}, ...]]}   (no rules: the whole
                                                 service, and its review mark)
       {"action": "remove", "method": "GET", "path": "/users/{int}"}
       {"action": "widen", "method", "path", "query": {"q": ["text"]} | "*",
                           "body": {...} | "*", "callers": ["ns/workload"]}
       {"action": "edit", "method", "path", "rule": {"method", "path", "query", ...}}
     -> {"action", "destination", "service": view}

Each edit is a step of `meshward.core.review` on the destination's shared state: with the
cluster store, one write of the Allowlist object under its resourceVersion (every replica
takes it from its watch within a flush interval); with the embedded store, on this serve's
engine and written at once. Either way it is in effect in this serve when the answer is sent
(cached decisions are dropped), and it is one audit record: who, via, peer, target
(destination and rule), old -> new.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from meshward.app.audit import AuditLog
from meshward.app.auth import principal_of
from meshward.app.flusher import Flusher
from meshward.app.ingest import loads
from meshward.app.store import StoreError
from meshward.core import review
from meshward.core.allowlist_merge import Shared, contribution, profile_doc, rule_key
from meshward.core.engine import Engine
from meshward.core.reviewstate import RuleKey

if TYPE_CHECKING:  # the cluster store (and the kubernetes client) load only when used
    from meshward.app.kubestore import KubeStore

MAX_BODY = 64 * 1024  # one edit is a rule or a list of rule keys
LOCAL = "local"  # the replica id of a serve that is the only writer of its store


class ReviewServer(Protocol):
    """What the review routes use of `meshward serve` (meshward.app.serve.Server)."""

    @property
    def engine(self) -> Engine: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def flusher(self) -> Flusher | None: ...
    @property
    def cluster(self) -> KubeStore | None: ...
    def mode_changed(self) -> None: ...


REVIEW_SERVER: web.AppKey[ReviewServer] = web.AppKey("review-server")


def _fail(status: int, message: str) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        503: web.HTTPServiceUnavailable,
    }
    return kinds.get(status, web.HTTPBadRequest)(
        text=json.dumps({"error": message}), content_type="application/json"
    )


async def listing(request: web.Request) -> web.Response:
    engine = request.app[REVIEW_SERVER].engine
    wanted = request.query.get("destination") or None
    services = [
        review.view(p.to_doc())
        for d, p in sorted(engine.allowlist.services.items())
        if wanted is None or d == wanted
    ]
    return web.json_response(
        {
            "services": services,
            "second_look": {
                "single_caller": f"learned from at most {review.SINGLE_CALLER} caller",
                "short_burst": f"first to last seen under {int(review.BURST_SECONDS)} s",
            },
        }
    )


def _key(doc: dict[str, Any]) -> RuleKey:
    method, path = doc.get("method"), doc.get("path")
    if not isinstance(method, str) or not method or not isinstance(path, str) or path[:1] != "/":
        raise _fail(400, 'a rule is named by "method" and "path" (a template starting with /)')
    return rule_key(method, path)


def _step(
    action: str, doc: dict[str, Any], who: str, now: float, server: ReviewServer
) -> tuple[Callable[[Shared], Shared], str]:
    """The edit as a step on the shared state, and the audit target's rule part."""
    limits = server.engine.allowlist.limits
    if action == "approve":
        rules = doc.get("rules")
        if rules is None:
            return (lambda s: review.approve(s, None, who, now)), "*"
        if not isinstance(rules, list) or not rules or not all(isinstance(r, dict) for r in rules):
            raise _fail(400, 'rules must be a non-empty list of {"method", "path"}')
        keys = [_key(r) for r in rules]
        return (lambda s: review.approve(s, keys, who, now)), ", ".join(" ".join(k) for k in keys)
    key = _key(doc)
    name = " ".join(key)
    if action == "remove":
        return (lambda s: review.remove(s, key, who, now)), name
    if action == "widen":
        more = review.widening(
            key, {k: doc[k] for k in doc if k not in ("action", "method", "path")}
        )
        return (lambda s: review.widen(s, key, more, who, now, limits)), name
    if action == "edit":
        new = review.parse_rule(doc.get("rule"))
        return (lambda s: review.edit(s, key, new, who, now, limits)), name
    raise _fail(400, f"action must be one of {', '.join(review.ACTIONS)}")


async def edit(request: web.Request) -> web.Response:
    server = request.app[REVIEW_SERVER]
    dest = request.query.get("destination", "")
    if not dest or len(dest) > 317:
        raise _fail(400, "destination=NAMESPACE/NAME is required")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _fail(400, f"an edit is at most {MAX_BODY} bytes")
    raw = await request.read()  # whole: content.read(n) may return only the first part
    if len(raw) > MAX_BODY:
        raise _fail(400, f"an edit is at most {MAX_BODY} bytes")
    try:
        doc = loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise _fail(400, 'body must be a JSON object like {"action": "remove", "method", "path"}')
    action = doc.get("action")
    who = principal_of(request)
    name = who.name if who else ""
    try:
        step, rule = _step(str(action), doc, name, time.time(), server)
        before = _shown(server.engine, dest)
        after = await apply(server, dest, step)
    except review.ReviewError as exc:
        raise _fail(exc.status, str(exc)) from None
    except StoreError as exc:
        raise _fail(503, f"the edit was not stored: {exc}") from None
    server.mode_changed()  # a cached allow of a removed rule must not outlive it
    old, new = _summary(before, rule), _summary(after, rule)
    await asyncio.to_thread(
        server.audit.record,
        f"allowlist.{action}",
        name,
        f"{dest} {rule}",
        old,
        new,
        via=who.via if who else "",
        peer=request.remote or "",
    )
    return web.json_response({"action": action, "destination": dest, "service": review.view(after)})


def _shown(engine: Engine, dest: str) -> dict[str, Any] | None:
    p = engine.allowlist.get(dest)
    return p.to_doc() if p is not None else None


def _summary(doc: dict[str, Any] | None, rule: str) -> str:
    """What the audit line says of a rule before and after: absent, or its content's digest
    and approval."""
    if doc is None:
        return "absent"
    if rule == "*":
        return f"{len(doc.get('endpoints') or [])} rules"
    shown = {f"{e['method']} {e['path']}": e for e in doc.get("endpoints") or []}
    parts = []
    for name in rule.split(", "):
        e = shown.get(name)
        parts.append(f"{name}: absent" if e is None else f"{name}: {review.digest(e)}")
    return "; ".join(parts)


async def apply(
    server: ReviewServer, dest: str, step: Callable[[Shared], Shared]
) -> dict[str, Any]:
    """Run an edit where the destination's rules are kept; the profile document after it,
    already in this serve's engine."""
    engine = server.engine
    if server.cluster is not None and server.flusher is not None:
        from meshward.app import replica

        change = await server.flusher.call_off_loop(server.cluster.edit, dest, step)
        replica.adopt(engine, server.cluster.replica, [change])
        return _shown(engine, dest) or {"destination": dest, "endpoints": []}
    profile = engine.allowlist.get(dest)
    if profile is None:
        raise review.ReviewError(f"no rules learned for {dest}", 404)
    doc = profile_doc(step(contribution(profile.to_doc(), LOCAL, decisions=True)))
    engine.replace_profile(dest, doc)
    if server.flusher is not None:  # the document made here: the engine stays on this thread
        await server.flusher.call_off_loop(server.flusher.store.save_profiles, {dest: doc})
    return doc


def install(app: web.Application, server: ReviewServer) -> None:
    app[REVIEW_SERVER] = server
    app.router.add_get("/api/v1/review", listing)
    app.router.add_post("/api/v1/review", edit)
