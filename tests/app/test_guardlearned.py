"""The mesh guard's copy of serve's learned allowlists: read, kept while serve is away for a
bounded time, then given up, said in the findings (meshward.core.meshguard.Learned). The read
through a real serve and the install's RBAC is in tests/app/test_meshguard.py."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from meshward.app.cli import main
from meshward.app.guardlearned import NO_SERVER, LearnedAllowlists
from meshward.runtime.client import ApiClient, ApiError
from tests.support.allowlists import allowlist_of


class Serve:
    """serve's allowlist route as the client sees it: a document, or an error when down."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = allowlist_of(("GET", "/a", {"shop/web": 1})).export_doc()
        self.down = False

    def allowlist(self) -> dict[str, Any]:
        if self.down:
            raise ApiError("GET", "/api/v1/allowlist", None, "connection refused")
        return self.doc


def test_copy_kept_while_fresh_then_given_up() -> None:
    now = [0.0]
    serve = Serve()
    learned = LearnedAllowlists(serve, refresh=1.0, max_age=10.0, clock=lambda: now[0])
    assert learned.current().not_compared() == (
        "not compared with the learned allowlist: not read from serve yet"
    )
    assert learned.read() is True  # a first copy: judge again
    assert learned.current().allowlist.get("shop/api") is not None
    assert learned.read() is False  # the same content: nothing to judge again
    serve.doc["services"][0]["endpoints"][0]["count"] = 99  # learning counts: the same
    assert learned.read() is False
    serve.doc = allowlist_of(("GET", "/b", {"shop/web": 1})).export_doc()
    assert learned.read() is True
    serve.down, now[0] = True, 5.0
    assert learned.read() is False  # the last copy still serves
    assert learned.current().allowlist is not None and learned.age() == 5.0
    now[0] = 11.0
    assert learned.read() is True  # too old: the comparison is off, and the rules say so
    assert learned.current().allowlist is None
    assert "could not be read (GET /api/v1/allowlist: connection refused)" in (
        learned.current().not_compared()
    )
    assert learned.counters.failures == 2 and learned.counters.changes == 2
    serve.down = False
    assert learned.read() is True and learned.current().allowlist is not None


def test_unreachable_and_no_server() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    learned = LearnedAllowlists(ApiClient(f"http://127.0.0.1:{port}", "t", timeout=2))
    assert learned.read() is False  # never had a copy: nothing changed for the rules
    assert "could not be read" in learned.current().not_compared()
    assert learned.counters.failures == 1
    none = LearnedAllowlists(None)
    assert none.read() is False
    assert none.current().not_compared().endswith(NO_SERVER)


def test_a_broken_answer_is_no_copy() -> None:
    serve = Serve()
    serve.doc = {"version": 1, "services": [{"destination": "shop/api", "endpoints": "x"}]}
    learned = LearnedAllowlists(serve)
    assert learned.read() is False
    assert "could not be read" in learned.current().not_compared()


def test_controller_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for flags, said in (
        (["--learned-refresh", "0"], "--learned-refresh must be 1..3600 seconds"),
        (["--trust-domain", "a b"], "--trust-domain must be a host name"),
    ):
        assert main(["controller", "--identity", "x", *flags]) == 2
        assert said in capsys.readouterr().err
