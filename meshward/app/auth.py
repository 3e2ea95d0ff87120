"""Who may call meshward's HTTP port: bearer tokens, browser sessions, CSRF, security headers.

Every route but the probes (`/healthz`, `/readyz`, and `/metrics` when it is made public) needs
a principal. A principal comes from one of:

- a bearer token (`Authorization: Bearer TOKEN`), checked by an `Authenticator`: standalone,
  one static token (`MESHWARD_API_TOKEN`, `--api-token-file`, or one generated beside the store
  with mode 0600); in a cluster, Kubernetes ServiceAccount tokens (TokenReview);
- a session cookie a browser got by POSTing a token to `/api/v1/session` (the login form, or
  the page's script reading a `/#token=TOKEN` link: the fragment never reaches a server, a
  proxy or an access log). The cookie is HttpOnly and SameSite=Strict; a mutating call with it
  also needs the session's CSRF token in `X-CSRF-Token` (a bearer token is no ambient
  credential, so it needs none).

Tokens are compared in constant time, never logged, and failures are counted and logged with
the peer address only.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web

from meshward.core.log import event
from meshward.core.modes import EVERY_OTHER
from meshward.runtime.client import TOKEN_ENV

log = logging.getLogger("meshward.auth")

TOKEN_FILE_NAME = "api-token"
SESSION_COOKIE = "meshward_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = 8 * 3600.0
LOGIN_CODE_TTL = 60.0
MAX_SESSIONS = 1000
MAX_TOKEN_BYTES = 8192  # a ServiceAccount JWT is ~1 KB; anything far longer is not a token
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
LOGIN_PATHS = frozenset({"/", "/login", "/api/v1/session"})  # the login page and its POST
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class TokenError(ValueError):
    """The API token cannot be read or made safely (a one-line reason for the operator)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the authenticator verified it."""

    name: str  # "api-token", or a Kubernetes user such as system:serviceaccount:ns:sa
    groups: tuple[str, ...] = ()
    via: str = "bearer"  # bearer | session
    uid: str = ""
    # what the API server vouched for besides (a bound token's pod: authentication.kubernetes.io/
    # pod-name and pod-uid), as sorted (key, values) pairs
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def extra_value(self, key: str) -> str:
        """The one value of an `extra` key ("" when absent or not exactly one)."""
        for k, values in self.extra:
            if k == key and len(values) == 1:
                return values[0]
        return ""


class Authenticator(Protocol):
    """Turns a presented bearer token into a verified principal, or None."""

    async def authenticate(self, token: str) -> Principal | None: ...


@dataclass(frozen=True)
class Permission:
    """What a route needs, as a Kubernetes authorization attribute: a verb on a resource of
    the `meshward.io` API group, `namespace` scoped when the request names one."""

    verb: str
    resource: str
    namespace: str = ""

    def __str__(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.verb} {self.resource}.{API_GROUP}{where}"


API_GROUP = "meshward.io"
# (method, route pattern) -> (verb, resource, where a namespace comes from): the table
# docs/security.md shows. In a cluster each is a SubjectAccessReview on `resource.meshward.io`
# (namespaced when the request names a namespace, so a Role in that namespace can grant it);
# `allowlists` is the Allowlist custom resource itself, the others are virtual resources, as
# kube-rbac-proxy authorizes metrics. A route missing here is refused to everyone but the
# standalone token.
ROUTE_PERMISSIONS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("GET", "/metrics"): ("get", "metrics", ""),
    ("GET", "/api/v1/alerts"): ("list", "alerts", "query:namespace"),
    ("GET", "/api/v1/edges"): ("list", "edges", "query:namespace"),
    ("GET", "/api/v1/allowlist"): ("list", "allowlists", "query:destination"),
    ("GET", "/api/v1/modes"): ("list", "modes", ""),
    ("PUT", "/api/v1/modes/{namespace}"): ("update", "modes", "path:namespace"),
    ("POST", "/api/v1/observations"): ("create", "observations", ""),
    # the controller's mesh guard findings (meshward.app.findingsapi): only its role has it
    ("POST", "/api/v1/findings"): ("create", "findings", ""),
    ("GET", "/api/v1/exchanges"): ("list", "exchanges", ""),
    ("POST", "/api/v1/session/code"): ("create", "sessions", ""),
    # the dashboard (meshward.app.dashboard): its page, its graph, its live alerts
    ("GET", "/dashboard/"): ("get", "dashboard", ""),
    ("GET", "/dashboard/{asset}"): ("get", "dashboard", ""),
    ("GET", "/api/v1/graph"): ("list", "allowlists", "query:namespace"),
    ("GET", "/api/v1/alerts/stream"): ("list", "alerts", "query:namespace"),
    # the allowlist review (meshward.app.reviewapi): reading it, and a person's edits
    ("GET", "/api/v1/review"): ("list", "allowlists", "query:destination"),
    ("POST", "/api/v1/review"): ("update", "allowlists", "query:destination"),
    # the enforce-readiness report (meshward.app.readiness): recent calls, or an uploaded HAR
    ("GET", "/api/v1/readiness/{namespace}"): ("get", "readiness", "path:namespace"),
    ("POST", "/api/v1/readiness/{namespace}"): ("create", "readiness", "path:namespace"),
    # the allowlist as Istio, Linkerd or OpenAPI documents (meshward.app.exportapi)
    ("GET", "/api/v1/exports/{format}"): ("list", "allowlists", "query:destination"),
}


def permission_for(request: web.Request) -> Permission | None:
    """What this request needs (None: a route outside the table)."""
    route = request.match_info.route.resource
    pattern = route.canonical if route is not None else request.path
    method = "GET" if request.method == "HEAD" else request.method
    found = ROUTE_PERMISSIONS.get((method, pattern))
    if found is None:
        return None
    verb, resource, ns_from = found
    namespace = ""
    kind, _, key = ns_from.partition(":")
    if kind == "query":
        namespace = request.query.get(key, "").partition("/")[0]
    elif kind == "path":
        namespace = request.match_info.get(key, "")
        if namespace == EVERY_OTHER:  # every namespace not set by name: a cluster-wide grant
            namespace = ""
    return Permission(verb, resource, namespace=namespace[:63])


class Authorizer(Protocol):
    """Whether a verified principal may do what a route needs."""

    async def allowed(self, principal: Principal, permission: Permission | None) -> bool: ...


class TokenHolderMayAll:
    """Standalone: the one API token is the operator's; it may call every route."""

    async def allowed(self, principal: Principal, permission: Permission | None) -> bool:
        return True


@dataclass
class StaticToken:
    """One shared secret, the standalone mode's credential."""

    token: str
    name: str = "api-token"

    async def authenticate(self, token: str) -> Principal | None:
        if hmac.compare_digest(token.encode(), self.token.encode()):
            return Principal(self.name)
        return None


def load_token(
    token_file: str | None, state_dir: str | Path, env: Mapping[str, str]
) -> tuple[str, str]:
    """The standalone API token and where it came from: `$MESHWARD_API_TOKEN`, else
    `token_file`, else `state_dir/api-token` (made with 32 random bytes, mode 0600, if it does
    not exist). A file that others may read is refused, as ssh refuses a readable key."""
    if env.get(TOKEN_ENV):
        return _checked(env[TOKEN_ENV], TOKEN_ENV), TOKEN_ENV
    path = Path(token_file) if token_file else Path(state_dir) / TOKEN_FILE_NAME
    if not token_file and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another replica made it first: read theirs
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            return token, str(path)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenError(
                f"{path}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
            )
        return _checked(path.read_text().strip(), str(path)), str(path)
    except OSError as exc:
        raise TokenError(f"{path}: {exc.strerror or exc}") from None


@dataclass
class AuthConfig:
    """How serve's HTTP port authenticates callers (ServeConfig.auth)."""

    token: str | None = field(default=None, repr=False)  # given in-process (tests, embedding)
    token_file: str | None = None  # --api-token-file
    public_metrics: bool = False  # --public-metrics: /metrics without a credential
    # --auth kubernetes: ServiceAccount tokens (TokenReview) and RBAC (SubjectAccessReview)
    kubernetes: bool = False
    kubeconfig: str | None = None  # serve's own credentials for the reviews (default in-cluster)
    audiences: tuple[str, ...] = ("meshward",)  # a token must be minted for one of these
    cache_seconds: float = 10.0


def guard_for(config: AuthConfig, state_dir: str | Path | None, env: Mapping[str, str]) -> Guard:
    """The standalone guard: the given token, else `load_token` (`state_dir` is where a
    generated one goes: beside the store; None for a store without a file, which then needs a
    token given). Logs where the token is, never the token. With `config.kubernetes`:
    Kubernetes tokens and RBAC through the API server (`meshward.app.kubeauth`), no static
    token at all."""
    if config.kubernetes:
        return _kubernetes_guard(config)
    if config.token:
        token, where = _checked(config.token, "the configured API token"), "configured"
    elif state_dir is None and not config.token_file and not env.get(TOKEN_ENV):
        raise TokenError(
            f"no API token: the store has no directory to keep one in; set {TOKEN_ENV} "
            "or --api-token-file"
        )
    else:
        token, where = load_token(config.token_file, state_dir or ".", env)
    event(log, "api token", source=where, public_metrics=config.public_metrics)
    return Guard(StaticToken(token), public_metrics=config.public_metrics)


def _kubernetes_guard(config: AuthConfig) -> Guard:
    from meshward.app.kubeauth import KubeAuth
    from meshward.kube.config import load_client
    from meshward.kube.errors import KubeConfigError
    from meshward.kube.review import Reviewer

    try:
        api = load_client(config.kubeconfig)
    except KubeConfigError as exc:
        raise TokenError(f"--auth kubernetes: {exc}") from None
    checks = KubeAuth(Reviewer(api, config.audiences), ttl=config.cache_seconds)
    event(
        log,
        "api authentication",
        source="kubernetes",
        audiences=",".join(config.audiences),
        public_metrics=config.public_metrics,
    )
    return Guard(checks, public_metrics=config.public_metrics, authorizer=checks)


def _checked(token: str, where: str) -> str:
    if len(token) < 16 or len(token) > MAX_TOKEN_BYTES or not token.isprintable() or " " in token:
        raise TokenError(f"{where}: an API token must be 16 to 8192 printable characters")
    return token


@dataclass
class _Session:
    principal: Principal
    csrf: str
    expires: float


@dataclass
class Sessions:
    """Browser sessions: random ids kept in memory (bounded, expiring). A restart logs browsers
    out, which is the safe failure; each replica keeps its own (the Service's sessionAffinity
    or a fresh login covers a switch)."""

    ttl: float = SESSION_TTL
    size: int = MAX_SESSIONS
    _by_id: OrderedDict[str, _Session] = field(default_factory=OrderedDict)

    def open(self, principal: Principal, now: float) -> tuple[str, str]:
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._by_id[sid] = _Session(
            dataclasses.replace(principal, via="session"), csrf, now + self.ttl
        )
        while len(self._by_id) > self.size:
            self._by_id.popitem(last=False)
        return sid, csrf

    def get(self, sid: str, now: float) -> _Session | None:
        session = self._by_id.get(sid)
        if session is None:
            return None
        if session.expires <= now:
            del self._by_id[sid]
            return None
        return session

    def close(self, sid: str) -> None:
        self._by_id.pop(sid, None)


@dataclass
class LoginCodes:
    """One-time login codes (`meshward dashboard`): a caller with a credential trades it for a
    short-lived code that a browser redeems once for a session, so no long-lived token is
    pasted into a browser or shows in a URL. Random, single use, `ttl` seconds, bounded."""

    ttl: float = LOGIN_CODE_TTL
    size: int = MAX_SESSIONS
    _by_code: OrderedDict[str, tuple[Principal, float]] = field(default_factory=OrderedDict)

    def issue(self, principal: Principal, now: float) -> str:
        code = secrets.token_urlsafe(24)
        self._by_code[code] = (principal, now + self.ttl)
        while len(self._by_code) > self.size:
            self._by_code.popitem(last=False)
        return code

    def redeem(self, code: str, now: float) -> Principal | None:
        found = self._by_code.pop(code, None)  # used or not, a code works once
        if found is None or found[1] <= now:
            return None
        return found[0]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


@dataclass
class Guard:
    """The aiohttp middleware and the session routes, over one authenticator (who is calling)
    and one authorizer (what they may do)."""

    authenticator: Authenticator
    public_metrics: bool = False
    authorizer: Authorizer = field(default_factory=TokenHolderMayAll)
    secure_cookie: bool = False  # set when the port serves TLS
    sessions: Sessions = field(default_factory=Sessions)
    codes: LoginCodes = field(default_factory=LoginCodes)
    failures: int = 0  # refused for want of a valid credential (401)
    denials: int = 0  # authenticated, not allowed (403)
    # where refusals go: serve's Problems (counted in meshward_errors_total{where="http"},
    # logged at most a few lines a second, so a flood of bad tokens cannot flood the log);
    # a plain log event each without it
    report: Callable[..., None] | None = None
    clock: Callable[[], float] = time.time

    def is_open(self, request: web.Request) -> bool:
        return request.path in OPEN_PATHS or (self.public_metrics and request.path == "/metrics")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if not self.is_open(request) and request.path not in LOGIN_PATHS:
                principal = await self._principal(request)
                await self._authorize(request, principal)
                request[PRINCIPAL_KEY] = principal
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers.update(SECURITY_HEADERS)
        if isinstance(response, web.HTTPException):
            raise response
        return response

    async def _principal(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_BYTES:
                raise self._refused(request, "malformed Authorization header")
            principal = await self._authenticate(token)
            if principal is None:
                raise self._refused(request, "invalid token")
            return principal
        sid = request.cookies.get(SESSION_COOKIE, "")
        session = self.sessions.get(sid, self.clock()) if sid else None
        if session is None:
            raise self._refused(request, "no credentials" if not sid else "session expired")
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise web.HTTPForbidden(
                    text=_json_error("missing or wrong X-CSRF-Token"),
                    content_type="application/json",
                )
        return session.principal

    async def _authenticate(self, token: str) -> Principal | None:
        try:
            return await self.authenticator.authenticate(token)
        except Exception as exc:  # the reviewer is down: refuse, say so, never let it through
            raise self._unavailable("authentication", exc) from None

    async def _authorize(self, request: web.Request, principal: Principal) -> None:
        permission = permission_for(request)
        try:
            ok = await self.authorizer.allowed(principal, permission)
        except Exception as exc:
            raise self._unavailable("authorization", exc) from None
        if ok:
            return
        self.denials += 1
        what = str(permission) if permission else f"{request.method} {request.path[:200]}"
        self._report("forbidden", user=principal.name, peer=request.remote or "", need=what)
        raise web.HTTPForbidden(
            text=_json_error(f"forbidden: {principal.name} may not {what}"),
            content_type="application/json",
        )

    def _refused(self, request: web.Request, why: str) -> web.HTTPUnauthorized:
        self.failures += 1
        self._report(
            "unauthenticated", peer=request.remote or "", path=request.path[:200], reason=why
        )
        return web.HTTPUnauthorized(
            text=_json_error(f"authentication required: {why}"),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="meshward"'},
        )

    def _unavailable(self, what: str, exc: Exception) -> web.HTTPServiceUnavailable:
        self._report(f"{what}-unavailable", error=repr(exc)[:200])
        return web.HTTPServiceUnavailable(
            text=_json_error(f"{what} unavailable"), content_type="application/json"
        )

    def _report(self, kind: str, **fields: object) -> None:
        if self.report is not None:
            self.report("http", kind, **fields)
        else:
            event(log, f"http: {kind}", logging.WARNING, **fields)

    # ---- the session routes
    async def login(self, request: web.Request) -> web.StreamResponse:
        """POST /api/v1/session {"token": ...} or {"code": ...} (a one-time login code) -> a
        session cookie and the CSRF token; DELETE logs out."""
        if request.method == "DELETE":
            self.sessions.close(request.cookies.get(SESSION_COOKIE, ""))
            response = web.json_response({"logged_out": True})
            response.del_cookie(SESSION_COOKIE, path="/")
            return response
        try:
            doc = await request.json()
        except Exception:
            doc = None
        token = doc.get("token") if isinstance(doc, dict) else None
        code = doc.get("code") if isinstance(doc, dict) else None
        if isinstance(code, str) and code and len(code) <= 256 and token is None:
            principal = self.codes.redeem(code, self.clock())
            if principal is None:
                raise self._refused(request, "invalid, used or expired login code")
        elif isinstance(token, str) and token and len(token) <= MAX_TOKEN_BYTES:
            principal = await self._authenticate(token)
            if principal is None:
                raise self._refused(request, "invalid token")
        else:
            raise web.HTTPBadRequest(
                text=_json_error('body must be {"token": "..."} or {"code": "..."}'),
                content_type="application/json",
            )
        sid, csrf = self.sessions.open(principal, self.clock())
        response = web.json_response({"user": principal.name, "csrf_token": csrf})
        response.set_cookie(
            SESSION_COOKIE,
            sid,
            httponly=True,
            samesite="Strict",
            path="/",
            secure=self.secure_cookie,
            max_age=int(self.sessions.ttl),
        )
        event(log, "session opened", user=principal.name, peer=request.remote or "")
        return response

    async def login_code(self, request: web.Request) -> web.StreamResponse:
        """POST /api/v1/session/code (authenticated) -> a one-time login code for the caller."""
        principal = principal_of(request)
        if principal is None:  # the middleware authenticated this route; never reached
            raise self._refused(request, "no credentials")
        code = self.codes.issue(principal, self.clock())
        event(log, "login code issued", user=principal.name, peer=request.remote or "")
        return web.json_response({"code": code, "expires_in": int(self.codes.ttl)})

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=LOGIN_PAGE,
            content_type="text/html",
            headers={"Content-Security-Policy": LOGIN_CSP},
        )

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware)
        app.router.add_get("/", self.login_page)  # until the dashboard serves /
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/api/v1/session", self.login)
        app.router.add_delete("/api/v1/session", self.login)
        app.router.add_post("/api/v1/session/code", self.login_code)


def principal_of(request: web.Request) -> Principal | None:
    """The verified caller of a request (None on the open probe routes)."""
    value = request.get(PRINCIPAL_KEY)
    return value if isinstance(value, Principal) else None


def _json_error(msg: str) -> str:
    return json.dumps({"error": msg})


_CSP = (
    "default-src 'none'; script-src 'sha256-{}'; style-src 'unsafe-inline'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'"
)
_LOGIN_SCRIPT = """
const form = document.getElementById('login'), out = document.getElementById('msg');
async function login(cred) {
  const r = await fetch('/api/v1/session', {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'}, body: JSON.stringify(cred)});
  if (!r.ok) { out.textContent = 'Login failed (' + r.status + ')'; return; }
  const doc = await r.json();
  sessionStorage.setItem('meshward.csrf', doc.csrf_token);
  out.textContent = 'Logged in as ' + doc.user;
  location.replace('/dashboard/');
}
const m = /^#(token|code)=(.+)$/.exec(location.hash);
if (m) {
  history.replaceState(null, '', location.pathname);
  login({[m[1]]: decodeURIComponent(m[2])});
}
form.addEventListener('submit', e => { e.preventDefault(); login({token: form.token.value}); });
"""


def _login_page() -> tuple[str, str]:
    digest = base64.b64encode(hashlib.sha256(_LOGIN_SCRIPT.encode()).digest()).decode()
    page = (
        "<!doctype html><html><head><meta charset=utf-8><title>meshward: log in</title>"
        "<meta name=referrer content=no-referrer></head><body>"
        "<h1>meshward</h1><form id=login><label>API token "
        "<input name=token type=password autocomplete=off required></label> "
        "<button>Log in</button></form><p id=msg role=status></p>"
        f"<script>{_LOGIN_SCRIPT}</script></body></html>"
    )
    return page, _CSP.format(digest)


LOGIN_PAGE, LOGIN_CSP = _login_page()
