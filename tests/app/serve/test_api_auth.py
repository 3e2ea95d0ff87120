"""Authentication on `meshward serve`'s HTTP port, on by default: the issue's attacks (switching
enforcement off, teaching the allowlist) without or with a wrong token are refused and change
nothing; with the token they work. Real server, real HTTP on loopback."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest

from meshward.app.auth import AuthConfig, TokenError
from meshward.app.commands import UsageError
from meshward.app.serve import ServeConfig, Server
from meshward.core.observation import Identity, Observation, observation_to_dict
from meshward.runtime.client import ApiClient, ApiError
from tests.support.serve import api_client, running_server

FORGED = observation_to_dict(
    Observation(
        seen_by="node-tap",
        destination=Identity("shop", "api"),
        source=Identity("evil", "attacker"),
        method="POST",
        path="/admin/dump",
    )
)


def _status(client: ApiClient, method: str, path: str, doc: object = None) -> int:
    try:
        client.request(method, path, doc)
    except ApiError as exc:
        assert exc.status is not None, exc
        return exc.status
    return 200


def _url(srv: Server) -> str:
    return f"http://127.0.0.1:{srv.ports['http']}"


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", "x" * 8150])
def test_mode_switch_and_forged_ingest_refused_without_the_token(token: str | None) -> None:
    async def main() -> None:
        async with running_server() as srv:
            stranger = ApiClient(_url(srv), token)
            put = await asyncio.to_thread(
                _status, stranger, "PUT", "/api/v1/modes/shop", {"mode": "learn"}
            )
            post = await asyncio.to_thread(
                _status, stranger, "POST", "/api/v1/observations", [FORGED]
            )
            assert (put, post) == (401, 401)
            assert srv.engine.modes() == {}  # nothing changed
            assert srv.engine.allowlist.export_doc()["services"] == []
            assert srv.guard.failures == 2
            for path in ("/api/v1/alerts", "/api/v1/allowlist", "/api/v1/modes", "/metrics"):
                assert await asyncio.to_thread(_status, stranger, "GET", path) == 401, path
            for path in ("/healthz", "/readyz"):  # the probes stay open
                assert await asyncio.to_thread(_status, stranger, "GET", path) == 200

            owner = api_client(srv)
            assert await asyncio.to_thread(owner.set_mode, "shop", "enforce")
            assert srv.engine.modes() == {"shop": "enforce"}
            got = await asyncio.to_thread(owner.post_observations, [FORGED])
            assert got == {"accepted": 1, "rejected": 0}
            assert "meshward_" in await asyncio.to_thread(owner.metrics_text)

    asyncio.run(main())


def test_refusal_says_how_and_sets_security_headers() -> None:
    async def main() -> None:
        async with running_server() as srv:
            import aiohttp

            async with aiohttp.ClientSession() as s:
                async with s.put(_url(srv) + "/api/v1/modes/shop", json={"mode": "off"}) as r:
                    assert r.status == 401
                    assert r.headers["WWW-Authenticate"] == 'Bearer realm="meshward"'
                    assert r.headers["Referrer-Policy"] == "no-referrer"
                    assert "authentication required" in (await r.json())["error"]
                async with s.get(_url(srv) + "/login") as r:  # the login page is open
                    assert (
                        r.status == 200
                        and "script-src 'sha256-" in r.headers["Content-Security-Policy"]
                    )
            assert srv.engine.modes() == {}

    asyncio.run(main())


def test_public_metrics_is_an_option() -> None:
    async def main() -> None:
        auth = AuthConfig(token="a-token-of-sixteen-chars", public_metrics=True)
        async with running_server(auth=auth) as srv:
            stranger = ApiClient(_url(srv))
            assert "meshward_" in await asyncio.to_thread(stranger.metrics_text)
            assert await asyncio.to_thread(_status, stranger, "GET", "/api/v1/alerts") == 401

    asyncio.run(main())


def test_token_generated_beside_the_store_and_used(tmp_path: Path) -> None:
    db = str(tmp_path / "state" / "meshward.db")
    os.makedirs(tmp_path / "state")

    async def main() -> None:
        async with running_server(db=db, auth=AuthConfig()) as srv:
            path = tmp_path / "state" / "api-token"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            client = ApiClient(_url(srv), token_file=str(path))
            assert await asyncio.to_thread(client.set_mode, "shop", "monitor")
            stranger = ApiClient(_url(srv))
            assert await asyncio.to_thread(_status, stranger, "GET", "/api/v1/modes") == 401

    asyncio.run(main())


def test_a_token_file_others_can_read_or_no_place_for_one_stops_serve(tmp_path: Path) -> None:
    loose = tmp_path / "token"
    loose.write_text("a-token-of-sixteen-chars\n")
    loose.chmod(0o644)
    with pytest.raises(TokenError, match="readable by others"):
        Server(ServeConfig(db=str(tmp_path / "m.db"), auth=AuthConfig(token_file=str(loose))))
    with pytest.raises(TokenError, match="no API token"):
        Server(ServeConfig(db=":memory:"))


def test_modes_from_labels_refuses_put_with_the_label_named() -> None:
    async def main() -> None:
        async with running_server(modes_from_labels=True) as srv:
            with pytest.raises(ApiError) as err:
                await asyncio.to_thread(api_client(srv).set_mode, "shop", "learn")
            assert err.value.status == 409
            assert "meshward.io/mode" in err.value.reason
            assert srv.engine.modes() == {}

    asyncio.run(main())


def test_refusals_are_counted_and_logged_boundedly(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with running_server() as srv:
            stranger = ApiClient(_url(srv), "a-wrong-token-0123456789")

            def flood() -> None:
                for _ in range(40):
                    assert _status(stranger, "GET", "/api/v1/alerts") == 401

            await asyncio.to_thread(flood)
            text = srv.metrics.exposition().decode()
            assert 'meshward_errors_total{kind="unauthenticated",where="http"} 40.0' in text

    with caplog.at_level("WARNING"):
        asyncio.run(main())
    lines = [r for r in caplog.records if r.getMessage() == "http: unauthenticated"]
    assert 1 <= len(lines) <= 20  # 5 a second at most
    assert all("a-wrong-token" not in str(getattr(r, "fields", "")) for r in lines)


def test_one_time_login_code_opens_one_session(tmp_path: Path) -> None:
    """`meshward dashboard --url` trades the token file for a one-time code; the code opens
    exactly one browser session (HttpOnly cookie), then is dead; a code needs a credential."""
    import aiohttp

    from meshward.app.commands import dashboard

    async def main() -> None:
        async with running_server() as srv:
            token_file = tmp_path / "api-token"
            token_file.write_text(srv.config.auth.token or "")
            token_file.chmod(0o600)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshward", "dashboard", "--url", _url(srv),
                "--api-token-file", str(token_file), "--no-browser",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
            )  # fmt: skip
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            link = out.decode().split()[1]
            assert link.startswith(_url(srv) + "/login#code=")
            assert srv.config.auth.token not in out.decode()  # type: ignore[operator]
            code = link.split("#code=", 1)[1]
            jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address host
            async with aiohttp.ClientSession(cookie_jar=jar) as browser:
                async with browser.post(_url(srv) + "/api/v1/session", json={"code": code}) as r:
                    assert r.status == 200 and (await r.json())["user"] == "api-token"
                    assert "HttpOnly" in r.headers["Set-Cookie"]
                async with browser.get(_url(srv) + "/api/v1/modes") as r:
                    assert r.status == 200  # the session cookie works
            async with aiohttp.ClientSession() as again:
                async with again.post(_url(srv) + "/api/v1/session", json={"code": code}) as r:
                    assert r.status == 401  # used
                async with again.post(_url(srv) + "/api/v1/session/code") as r:
                    assert r.status == 401  # minting a code needs a credential
            with pytest.raises(UsageError, match="401"):
                await asyncio.to_thread(dashboard.login_link, _url(srv), ApiClient(_url(srv)))

    asyncio.run(main())


def test_login_codes_expire_and_are_bounded() -> None:
    from meshward.app.auth import LoginCodes, Principal

    codes = LoginCodes(ttl=60, size=2)
    who = Principal("api-token")
    first = codes.issue(who, now=0)
    assert codes.redeem(first, now=60) is None  # expired
    a, b, c = (codes.issue(who, now=0) for _ in range(3))
    assert codes.redeem(a, now=1) is None  # evicted: the oldest goes first
    assert codes.redeem(b, now=1) == who and codes.redeem(c, now=1) == who
    assert codes.redeem(c, now=1) is None  # once
