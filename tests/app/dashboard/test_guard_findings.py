"""A mesh guard finding on the dashboard, in a real headless Chromium against a real serve: the
controller's finding, posted to `POST /api/v1/findings`, appears live in the alert list with its
object, field, manager and `old → new`, and adds no node to the service graph (it is no call)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshward.core.threats.names import MESH_MTLS_WEAKENED
from tests.support import browser
from tests.support.dashboard import learned_calls
from tests.support.serve import API_TOKEN, api_client

pytestmark = [
    pytest.mark.integration,  # an external browser
    pytest.mark.skipif(bool(browser.missing()), reason=browser.missing() or "ready"),
]
WAIT = 10_000  # ms: a ceiling on each condition, not a pause


@pytest.fixture
def page() -> Iterator[Any]:
    with browser.chromium() as b:
        context = b.new_context(viewport={"width": 1280, "height": 900})
        try:
            yield context.new_page()
        finally:
            context.close()


def test_a_guard_finding_appears_live_and_stays_out_of_the_graph(page: Any, tmp_path: Path) -> None:
    with browser.serve_in_thread(db=str(tmp_path / "m.db")) as (srv, _):
        client = api_client(srv)
        client.post_observations(learned_calls())
        page.goto(f"http://127.0.0.1:{srv.ports['http']}/#token={API_TOKEN}")
        page.wait_for_url("**/dashboard/", timeout=WAIT)
        page.wait_for_selector("body[data-alerts=live]", timeout=WAIT)
        finding = {
            "threat": MESH_MTLS_WEAKENED,
            "kind": "PeerAuthentication",
            "namespace": "shop",
            "name": "default",
            "field": "spec.mtls.mode",
            "old": "STRICT",
            "new": "PERMISSIVE",
            "by": "mallory (Apply 2026-12-06T07:34:57Z)",
            "affects": ["shop"],
        }
        assert client.post_findings([finding]) == {"accepted": 1, "rejected": 0}
        item = page.locator("#alerts li").first
        item.wait_for(timeout=WAIT)
        text = item.inner_text()
        assert "mallory → shop/PeerAuthentication/default PeerAuthentication spec.mtls.mode" in text
        evidence = item.locator(".evidence").first.inner_text()
        assert evidence == f"{MESH_MTLS_WEAKENED} at spec.mtls.mode: STRICT → PERMISSIVE"
        ids = page.evaluate("() => window.meshward.cy.nodes().map(n => n.id())")
        assert "shop/PeerAuthentication/default" not in ids and "mallory" not in ids
        browser.ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(browser.ARTIFACTS / "guard-finding.png"), full_page=True)
