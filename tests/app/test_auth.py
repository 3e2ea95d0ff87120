"""meshward.app.auth: the token file, bearer tokens, browser sessions and CSRF, on a real
aiohttp server over loopback; property-based fuzzing of the headers and cookies it reads."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.app import auth

TOKEN = "s3cret-token-0123456789abcdef"


def _app(guard: auth.Guard) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        who = auth.principal_of(request)
        return web.json_response(
            {"user": who.name if who else None, "via": who.via if who else None}
        )

    app = web.Application()
    guard.install(app)
    app.router.add_get("/healthz", hello)
    app.router.add_get("/metrics", hello)
    app.router.add_get("/api/v1/alerts", hello)
    app.router.add_put("/api/v1/modes/{ns}", hello)
    return app


def run_with_client(
    test: Callable[[TestClient[Any, Any]], Awaitable[None]], guard: auth.Guard | None = None
) -> None:
    async def main() -> None:
        g = guard or auth.Guard(auth.StaticToken(TOKEN))
        async with TestClient(TestServer(_app(g))) as client:
            await test(client)

    asyncio.run(main())


# ---- the token file


def test_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    token, where = auth.load_token(None, tmp_path / "state", {})
    path = tmp_path / "state" / auth.TOKEN_FILE_NAME
    assert where == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32
    again, _ = auth.load_token(None, tmp_path / "state", {})
    assert again == token  # a restart keeps it


def test_env_wins_and_is_checked(tmp_path: Path) -> None:
    assert auth.load_token(None, tmp_path, {auth.TOKEN_ENV: TOKEN}) == (TOKEN, auth.TOKEN_ENV)
    with pytest.raises(auth.TokenError, match="16 to 8192"):
        auth.load_token(None, tmp_path, {auth.TOKEN_ENV: "short"})
    assert not (tmp_path / auth.TOKEN_FILE_NAME).exists()


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(auth.TokenError, match="readable by others"):
        auth.load_token(str(path), tmp_path, {})
    os.chmod(path, 0o600)
    assert auth.load_token(str(path), tmp_path, {}) == (TOKEN, str(path))


def test_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(auth.TokenError, match="No such file"):
        auth.load_token(str(tmp_path / "nope"), tmp_path, {})


# ---- bearer tokens


def test_routes_need_a_token_but_the_probes() -> None:
    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/healthz")
        assert r.status == 200
        assert r.headers["Referrer-Policy"] == "no-referrer"
        for method, path in (
            ("GET", "/api/v1/alerts"),
            ("PUT", "/api/v1/modes/shop"),
            ("GET", "/metrics"),
        ):
            r = await client.request(method, path)
            assert r.status == 401, path
            assert r.headers["WWW-Authenticate"] == 'Bearer realm="meshward"'
            assert "authentication required" in (await r.json())["error"]
        r = await client.get("/api/v1/alerts", headers={"Authorization": "Bearer wrong-token"})
        assert r.status == 401
        r = await client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 200
        assert await r.json() == {"user": "api-token", "via": "bearer"}
        r = await client.put("/api/v1/modes/shop", headers={"Authorization": f"bearer {TOKEN}"})
        assert r.status == 200  # no CSRF token needed: a bearer token is not ambient

    run_with_client(test)


def test_metrics_can_be_made_public() -> None:
    async def test(client: TestClient[Any, Any]) -> None:
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/api/v1/alerts")).status == 401

    run_with_client(test, auth.Guard(auth.StaticToken(TOKEN), public_metrics=True))


def test_authenticator_failure_refuses_with_503() -> None:
    class Down:
        async def authenticate(self, token: str) -> auth.Principal | None:
            raise ConnectionError("api server unreachable")

    async def test(client: TestClient[Any, Any]) -> None:
        r = await client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 503

    run_with_client(test, auth.Guard(Down()))


# ---- browser sessions


def test_login_gives_an_httponly_strict_cookie_and_csrf_guards_writes() -> None:
    async def test(client: TestClient[Any, Any]) -> None:
        page = await client.get("/")
        assert page.status == 200
        text = await page.text()
        assert "#(token|code)=" in text and "replaceState" in text  # the fragment link is consumed
        assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
        r = await client.post("/api/v1/session", json={"token": "wrong-token-0123456789"})
        assert r.status == 401
        r = await client.post("/api/v1/session", json={"token": TOKEN})
        assert r.status == 200
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        csrf = (await r.json())["csrf_token"]
        r = await client.get("/api/v1/alerts")  # the cookie jar sends the session
        assert await r.json() == {"user": "api-token", "via": "session"}
        r = await client.put("/api/v1/modes/shop")
        assert r.status == 403
        assert "X-CSRF-Token" in (await r.json())["error"]
        r = await client.put("/api/v1/modes/shop", headers={auth.CSRF_HEADER: "x" + csrf})
        assert r.status == 403
        r = await client.put("/api/v1/modes/shop", headers={auth.CSRF_HEADER: csrf})
        assert r.status == 200
        r = await client.delete("/api/v1/session")
        assert r.status == 200
        assert (await client.get("/api/v1/alerts")).status == 401

    run_with_client(test)


def test_sessions_expire_and_stay_bounded() -> None:
    sessions = auth.Sessions(ttl=10, size=3)
    who = auth.Principal("api-token")
    ids = [sessions.open(who, now=0.0)[0] for _ in range(5)]
    assert sessions.get(ids[0], now=1.0) is None  # evicted: at most 3 kept
    assert sessions.get(ids[4], now=1.0) is not None
    assert sessions.get(ids[4], now=11.0) is None  # expired


# ---- fuzzing what the guard reads from the wire

_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    authorization=st.one_of(
        _header_text,
        _header_text.map(lambda s: "Bearer " + s),
        st.just("Bearer " + TOKEN[:-1]),
        st.just("Bearer " + TOKEN + "x"),
        st.just("Basic " + TOKEN),
    ),
    cookie=_header_text,
    csrf=_header_text,
)
def test_fuzzed_credentials_never_pass_nor_crash(
    authorization: str, cookie: str, csrf: str
) -> None:
    async def test(client: TestClient[Any, Any]) -> None:
        headers = {
            "Authorization": authorization,
            "Cookie": f"{auth.SESSION_COOKIE}={cookie}",
            auth.CSRF_HEADER: csrf,
        }
        for method in ("GET", "PUT"):
            try:
                r = await client.request(
                    method,
                    "/api/v1/modes/shop" if method == "PUT" else "/api/v1/alerts",
                    headers=headers,
                )
            except aiohttp.ClientError:
                continue  # the client library refused to send it: nothing reached the guard
            expect_ok = authorization.strip() in (f"Bearer {TOKEN}",)
            assert (r.status == 200) == expect_ok, (authorization, r.status)
            assert r.status in (200, 400, 401, 403)

    run_with_client(test)


def test_the_mode_of_every_other_namespace_needs_a_cluster_wide_grant() -> None:
    """`PUT /api/v1/modes/*` is checked without a namespace (a Role in one namespace must not
    set every namespace's mode); a named namespace is checked in it."""

    async def main() -> None:
        async def seen(request: web.Request) -> web.Response:
            p = auth.permission_for(request)
            return web.json_response(None if p is None else [p.verb, p.resource, p.namespace])

        app = web.Application()
        app.router.add_put("/api/v1/modes/{namespace}", seen)
        async with TestClient(TestServer(app)) as client:
            for ns, want in (("%2A", ""), ("*", ""), ("shop", "shop")):
                r = await client.put(f"/api/v1/modes/{ns}")
                assert await r.json() == ["update", "modes", want]

    asyncio.run(main())
