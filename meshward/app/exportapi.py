"""`GET /api/v1/exports/{format}[?destination=NS/NAME]`: the allowlist as native policy.

format: authorizationpolicy | linkerd | openapi (meshward.app.exports). The answer is the YAML
stream the CLI writes (`application/yaml`, as an attachment the dashboard's download saves);
the notes of what it could not carry head it as comments and, counted, in
`X-Meshward-Export-Notes`. The allowlist is copied on serve's loop (as `GET /api/v1/allowlist`
does) and exported and rendered on a worker thread, so a large export does not hold up Checks.
Reading it needs `list allowlists` (auth.ROUTE_PERMISSIONS): it holds nothing the allowlist
route does not.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from aiohttp import web

from meshward.app.exports import FORMATS, ExportOptions, Snapshot

if TYPE_CHECKING:
    from meshward.app.api import ApiServer

ROUTE = "/api/v1/exports/{format}"
_DESTINATION = re.compile(r"[a-z0-9-]{1,63}/[a-z0-9.-]{1,253}|[\x21-\x7e]{1,253}")


def _server(request: web.Request) -> ApiServer:
    from meshward.app.api import SERVER_KEY

    return request.app[SERVER_KEY]


def _trust_domain(server: ApiServer) -> str:
    """The trust domain serve verifies callers in (its --trust-domain), for principals."""
    peers = getattr(server.config, "peers", None)
    return str(getattr(peers, "trust_domain", "") or "cluster.local")


def _bad(status: type[web.HTTPError], msg: str) -> web.HTTPError:
    return status(text=f'{{"error": "{msg}"}}', content_type="application/json")


async def get_export(request: web.Request) -> web.Response:
    fmt = request.match_info["format"]
    if fmt not in FORMATS:
        raise _bad(web.HTTPNotFound, f"format must be one of {', '.join(FORMATS)}")
    destination = request.query.get("destination") or None
    if destination is not None and not _DESTINATION.fullmatch(destination):
        raise _bad(web.HTTPBadRequest, "destination must be NS/NAME")
    server = _server(request)
    options = ExportOptions(trust_domain=_trust_domain(server))
    try:
        snapshot = Snapshot.of(server.engine, destination)  # on the loop: the engine is its
    except KeyError:
        raise _bad(web.HTTPNotFound, "no allowlist for that destination") from None
    text, notes = await asyncio.to_thread(snapshot.render, fmt, destination, options)
    name = f"meshward-{fmt}" + (f"-{destination.replace('/', '-')}" if destination else "")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120]
    return web.Response(
        text=text,
        content_type="application/yaml",
        headers={
            "Content-Disposition": f'attachment; filename="{safe}.yaml"',
            "X-Meshward-Export-Notes": str(notes),
            "Cache-Control": "no-store",
        },
    )


def install(app: web.Application) -> None:
    app.router.add_get(ROUTE, get_export)
