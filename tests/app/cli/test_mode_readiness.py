"""`meshward mode readiness NS` against a real serve: the recent calls' report, a HAR's, the
cluster's kubectl line, and a clear error when serve cannot be reached."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import browser
from tests.support.cli import Result
from tests.support.dashboard import call, har, learned_calls
from tests.support.serve import API_TOKEN, api_client

Run = Callable[..., Result]


def test_the_report_from_recent_calls_and_from_a_har(
    meshward: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHWARD_API_TOKEN", API_TOKEN)
    with browser.serve_in_thread() as (srv, _):
        url = f"http://127.0.0.1:{srv.ports['http']}"
        client = api_client(srv)
        client.post_observations(learned_calls())
        client.set_mode("shop", "monitor")
        client.post_observations([call("shop/web", "shop/api", "DELETE", "/users/1")])
        got = meshward("mode", "readiness", "shop", "--url", url)
        assert got.code == 0, got.err
        lines = got.out.splitlines()
        assert lines[0].startswith("shop: as enforce (now monitor), from 16 recent calls")
        assert lines[1] == "  would deny 1, would alert 0"
        assert "  shop/api: 1 denied, 0 alerted of 13" in got.out
        assert "DELETE /users/1 from shop/web: 1 (" in got.out
        assert lines[-1] == "to switch: meshward mode set shop enforce"
        path = tmp_path / "t.har"
        path.write_bytes(har([("shop/web", "shop/api", "GET", "/nope")]))
        got = meshward("mode", "readiness", "shop", "--url", url, "--har", str(path), "--json")
        assert got.code == 0, got.err
        report = json.loads(got.out)
        assert (report["from"], report["would_deny"]) == ("har", 1)
        assert (
            "from 1 requests of the HAR"
            in meshward("mode", "readiness", "shop", "--url", url, "--har", str(path)).out
        )
    got = meshward("mode", "readiness", "shop", "--url", url)
    assert got.code == 2 and "cannot get the readiness report" in got.err
    assert API_TOKEN not in got.err + got.out
