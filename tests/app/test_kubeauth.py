"""meshward.app.kubeauth in front of a real aiohttp server, with a Reviewer stand-in whose
answers hypothesis chooses (a user or not, allowed or not, the API server failing): the guard
answers 200 only for an authenticated and allowed caller, 401/403 otherwise, 503 whenever a
review failed, never 500; verdicts are cached, bounded, and failures never cached. The real
TokenReview and SubjectAccessReview are tested on the API server in
tests/app/serve/test_kube_auth.py; this stand-in returns what those calls return."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.app import auth
from meshward.app.kubeauth import KubeAuth, Verdicts
from meshward.kube.errors import KubeUnavailable
from meshward.kube.review import Access, UserInfo


@dataclass
class Answers:
    """What the API server says: `user` (None: not authenticated), `allowed`, or `down`."""

    user: UserInfo | None
    allowed: bool
    down: str = ""  # "tokenreview" | "sar" | ""
    asked: list[Any] = field(default_factory=list)

    def review_token(self, token: str) -> UserInfo | None:
        self.asked.append(("token", token))
        if self.down == "tokenreview":
            raise KubeUnavailable("cannot reach the Kubernetes API server")
        return self.user

    def allowed_(self, user: UserInfo, access: Access) -> bool:
        self.asked.append(("access", user, access))
        if self.down == "sar":
            raise KubeUnavailable("cannot reach the Kubernetes API server")
        return self.allowed


class Reviewer:
    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.review_token = answers.review_token
        self.allowed = answers.allowed_


def _app(guard: auth.Guard) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"user": auth.principal_of(request).name})  # type: ignore[union-attr]

    app = web.Application()
    guard.install(app)
    app.router.add_get("/api/v1/alerts", ok)
    app.router.add_post("/api/v1/observations", ok)
    app.router.add_get("/api/v1/unlisted", ok)
    return app


USERS = st.none() | st.builds(
    UserInfo,
    username=st.text(min_size=1, max_size=30),
    uid=st.text(max_size=10),
    groups=st.lists(st.text(max_size=10), max_size=3).map(tuple),
)
HEADERS = st.one_of(
    st.none(),
    st.just("Bearer good-token"),
    st.text(max_size=60).map(lambda t: "Bearer " + t),
    st.text(max_size=60),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    USERS,
    st.booleans(),
    st.sampled_from(["", "tokenreview", "sar"]),
    HEADERS,
    st.sampled_from(["/api/v1/alerts", "/api/v1/unlisted"]),
)
def test_only_authenticated_and_allowed_pass(
    user: UserInfo | None, allowed: bool, down: str, header: str | None, path: str
) -> None:
    answers = Answers(user, allowed, down)
    checks = KubeAuth(Reviewer(answers))  # type: ignore[arg-type]

    async def main() -> int:
        guard = auth.Guard(checks, authorizer=checks)
        async with TestClient(TestServer(_app(guard))) as http:
            headers = {"Authorization": header} if header is not None else {}
            try:
                r = await http.get(path, headers=headers)
            except ValueError:  # aiohttp's client refuses some header values itself
                return -1
            return r.status

    status = asyncio.run(main())
    if status == -1:
        return
    assert status != 500
    token_sent = bool(header and header.lower().startswith("bearer ") and header[7:].strip())
    if status == 200:
        assert token_sent and user is not None and allowed and not down
        assert path == "/api/v1/alerts"  # a route outside the table is nobody's
    elif status == 503:
        assert token_sent and (down == "tokenreview" or (down == "sar" and user is not None))
    elif status == 403:
        assert user is not None and (not allowed or path == "/api/v1/unlisted")
    else:
        assert status in (400, 401)


def test_verdicts_are_cached_by_hash_bounded_and_failures_not_cached() -> None:
    now = [0.0]
    answers = Answers(UserInfo("system:serviceaccount:ops:me"), True)
    checks = KubeAuth(Reviewer(answers), ttl=10, negative_ttl=2, size=3, clock=lambda: now[0])  # type: ignore[arg-type]
    perm = auth.Permission("list", "alerts")

    async def main() -> None:
        who = await checks.authenticate("good-token")
        assert who is not None and await checks.allowed(who, perm)
        assert await checks.authenticate("good-token") == who
        assert await checks.allowed(who, perm)
        assert checks.reviews == 2  # one of each
        assert b"good-token" not in repr(checks.tokens._items).encode()  # keyed by hash
        for i in range(10):
            await checks.authenticate(f"token-{i}")
        assert len(checks.tokens) == 3  # bounded
        now[0] = 11.0
        answers.down = "tokenreview"
        for _ in range(2):  # a failure is raised each time, never remembered as a verdict
            try:
                await checks.authenticate("good-token")
                raise AssertionError("a failed review passed")
            except KubeUnavailable:
                pass
        answers.down, answers.user = "", None
        assert await checks.authenticate("good-token") is None
        assert await checks.allowed(who, None) is False  # outside the table: no review

    asyncio.run(main())


def test_verdicts_expire() -> None:
    now = [0.0]
    v: Verdicts[int] = Verdicts(2, lambda: now[0])
    v.put("a", 1, 1.0)
    assert v.get("a") == (True, 1)
    now[0] = 1.0
    assert v.get("a") == (False, None) and len(v) == 0
