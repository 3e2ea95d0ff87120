"""`meshward controller`'s audit webhook: the API server's audit Events, so the mesh guard names
the user who made a change, not only the tool (docs/mesh-guard.md, "Who changed it").

The API server's webhook backend (`--audit-webhook-config-file`, a kubeconfig whose cluster
`server` is this port's URL) POSTs `audit.k8s.io/v1` EventLists, batched; a log shipper
forwarding the log backend's lines may POST a JSON array of Events instead. Whoever can post
here can name a user of their choosing for a change, or hide the real one behind a forged Event,
so the port is HTTPS only and never takes an anonymous Event:

- a bearer token (the webhook kubeconfig's `user.token`), compared in constant time with the
  one in `token_file` (read again when the file changes: a Secret rotated in place), and/or
- a client certificate (the kubeconfig's `client-certificate`), which TLS verifies against
  `client_ca` before any byte of HTTP is read.

Only the replica that leads reports findings, so the others answer 503 (the API server retries
a batch with a backoff, and the next try may reach the leader); refusals are counted by why in
the guard's audit counters (`meshward_controller_guard_audit_total`), with at most a few log
lines a second. Bad bodies are a 400 or 413, never a crash; Events the guard has no use for
(reads, failed and dry-run requests, subresources) are counted by why and dropped.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from meshward.app.ingest import loads
from meshward.app.meshguard import MeshGuard
from meshward.app.threadedsite import ThreadedSite
from meshward.core.kubeaudit import events_of
from meshward.core.log import event
from meshward.runtime.metrics import Problems

log = logging.getLogger("meshward.controller")

PATH = "/audit"
MAX_BODY = 8 << 20  # the API server's default batch (400 Events) of the policy's kinds fits
MIN_TOKEN = 16


class AuditConfigError(ValueError):
    """The audit webhook cannot start as configured (the message says why)."""


@dataclass
class _TokenFile:
    """The shared secret in a file, read again when its modification time changes."""

    path: str
    _token: bytes = b""
    _mtime: float = -1.0

    def current(self) -> bytes:
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime != self._mtime:
                token = Path(self.path).read_bytes()[: 1 << 16].strip()
                if len(token) < MIN_TOKEN:
                    raise AuditConfigError(f"{self.path}: a token of {MIN_TOKEN}+ bytes")
                self._token, self._mtime = token, mtime
        except OSError as exc:
            if not self._token:
                raise AuditConfigError(f"{self.path}: {exc.strerror or exc}") from None
        return self._token


def tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The port's TLS: its serving certificate, TLS 1.2+, and client certificates verified
    against `client_ca` when given (required then)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise AuditConfigError(f"audit webhook TLS: {exc}") from None
    return ctx


class AuditPort(ThreadedSite):
    """The HTTPS port taking audit Events for `guard` (`POST /audit`)."""

    name = "audit-webhook"

    def __init__(
        self,
        guard: MeshGuard,
        *,
        cert: str,
        key: str,
        token_file: str | None = None,
        client_ca: str | None = None,
        leading: threading.Event | None = None,
        host: str = "0.0.0.0",
        port: int = 0,
    ) -> None:
        if not token_file and not client_ca:
            raise AuditConfigError(
                "the audit webhook needs a credential: a token file (the webhook kubeconfig's "
                "token) or a client CA (its client certificate), or both"
            )
        if guard.authors is None:
            raise AuditConfigError("the mesh guard keeps no audit records (authors not set)")
        super().__init__(host, port, tls_context(cert, key, client_ca))
        self.guard = guard
        self.token = _TokenFile(token_file) if token_file else None
        if self.token is not None:
            self.token.current()  # a missing or short token fails at start, not per request
        self.client_ca = client_ca
        self.leading = leading
        self.problems = Problems(None, log)

    def _refuse(
        self, why: str, error: type[web.HTTPException], text: str, **extra: Any
    ) -> web.HTTPException:
        self.guard.counters.audit[f"refused-{why}"] += 1
        self.problems("audit-webhook", why, error=text)
        body = json.dumps({"error": text})
        return error(text=body, content_type="application/json", **extra)

    def _too_large(self, size: int) -> web.HTTPException:
        return self._refuse(
            "too-large",
            web.HTTPRequestEntityTooLarge,
            f"at most {MAX_BODY} bytes in one batch",
            max_size=MAX_BODY,
            actual_size=size,
        )

    def _authenticated(self, request: web.Request) -> bool:
        if self.token is None:
            return True  # the client certificate was verified by TLS (CERT_REQUIRED)
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not sent:
            return False
        try:
            expected = self.token.current()
        except AuditConfigError:
            return False
        return hmac.compare_digest(sent.strip().encode(), expected)

    async def _events(self, request: web.Request) -> web.Response:
        if not self._authenticated(request):
            raise self._refuse(
                "unauthenticated", web.HTTPUnauthorized, "a valid bearer token is required"
            )
        if self.leading is not None and not self.leading.is_set():
            refused = self._refuse(
                "not-leader", web.HTTPServiceUnavailable, "this replica does not lead; retry"
            )
            refused.headers["Retry-After"] = "1"
            raise refused
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise self._too_large(request.content_length)
        try:  # the whole body (StreamReader.read(n) may return a part of it), at most MAX_BODY
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large(MAX_BODY + 1) from None
        try:
            events = events_of(loads(raw))
        except ValueError as exc:
            raise self._refuse("bad-body", web.HTTPBadRequest, str(exc)[:200]) from None
        self.guard.counters.audit["batches"] += 1
        kept, skipped = self.guard.add_audit(events)
        return web.json_response({"kept": kept, "skipped": skipped})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH, self._events)
        return app

    def start(self) -> None:
        super().start()
        event(
            log,
            "audit webhook",
            host=self.host,
            port=self.port,
            path=PATH,
            token=self.token is not None,
            client_ca=self.client_ca or "",
        )
