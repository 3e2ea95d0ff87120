"""The allowlist review page in a real headless Chromium (Debian's, driven by Playwright)
against a real `meshward serve` that learned through a real Envoy 1.40 sidecar (ext_proc tap):
the page lists the learned rules; removing one in the page (with its confirmation) makes the
next such request through an enforce sidecar (ext_authz) a 403, while the others pass; the
edit is audit-logged as the browser session's. Screenshot in tests/artifacts/dashboard/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.envoyproc import EnvoyProcess
from tests.support import browser
from tests.support.dashboard import learned_calls
from tests.support.envoy_http import ServerThread, echo_app, envoy_bin, http
from tests.support.serve import API_TOKEN, api_client

__all__ = ["echo_app", "envoy_bin"]  # fixtures
pytestmark = [
    pytest.mark.integration,  # an external browser, Envoy
    pytest.mark.skipif(bool(browser.missing()), reason=browser.missing() or "ready"),
]
WAIT = 10_000  # ms: a ceiling on each condition, not a pause
ORDER = json.dumps({"sku": "book-1", "qty": 2}).encode()
JSON = {"content-type": "application/json"}


VIEWPORT = {"width": 1280, "height": 1000}  # the page fixture (conftest) reads it


def sidecar(srv: ServerThread, app: int, mode: str, envoy: str) -> EnvoyProcess:
    boot = render_bootstrap(
        0,
        f"127.0.0.1:{app}",
        "shop",
        "api",
        mode,
        authz_port=srv.ports["authz"],
        tap_port=srv.ports["tap"],
    )
    return EnvoyProcess(boot, envoy=envoy, name=f"{mode}-sidecar")


def test_removing_a_rule_in_the_page_denies_the_next_such_request_in_enforce(
    page: Any, envoy_bin: str, echo_app: int, tmp_path: Path
) -> None:
    with ServerThread(str(tmp_path / "m.db")) as srv:
        with sidecar(srv, echo_app, "learn", envoy_bin) as envoy:
            for i in range(1, 4):
                assert http(envoy.port, f"/api/items/{i}?page={i}")[0] == 200
                assert http(envoy.port, "/api/orders", ORDER, headers=JSON)[0] == 200
            srv.wait_metric('meshward_observations_total{source="envoy-tap"}', 6)
        srv.api("PUT", "/api/v1/modes/shop", {"mode": "enforce"})
        with sidecar(srv, echo_app, "enforce", envoy_bin) as envoy:
            assert http(envoy.port, "/api/items/42?page=2")[0] == 200  # learned: allowed

            page.goto(f"http://127.0.0.1:{srv.ports['http']}/#token={API_TOKEN}")
            page.wait_for_url("**/dashboard/", timeout=WAIT)
            page.wait_for_selector("body[data-review-list=ready]", timeout=WAIT)
            page.select_option("#review-service", "shop/api")
            page.wait_for_selector('body[data-review="shop/api"]', timeout=WAIT)
            rows = page.locator("#review-rules tbody tr")
            learned = srv.api("GET", "/api/v1/allowlist?destination=shop/api")["services"][0]
            shown = sorted(rows.nth(i).get_attribute("data-rule") for i in range(rows.count()))
            assert shown == sorted(f"{e['method']} {e['path']}" for e in learned["endpoints"])
            items = page.locator('#review-rules tr[data-rule="GET /api/items/{int}"]')
            assert "page: int" in items.inner_text() and "3" in items.inner_text()

            items.get_by_role("button", name="Remove").click()
            items.get_by_role("button", name="Confirm remove GET /api/items/{int}").click()
            items.wait_for(state="detached", timeout=WAIT)
            page.locator("#review-removed li", has_text="GET /api/items/{int}").wait_for(
                timeout=WAIT
            )
            assert "denied in enforce" in page.locator("#review-status").inner_text()
            browser.ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(browser.ARTIFACTS / "review-removed.png"), full_page=True)

            status, _, body = http(envoy.port, "/api/items/42?page=2")
            assert status == 403 and json.loads(body)["error"] == "denied by meshward"
            assert http(envoy.port, "/api/orders", ORDER, headers=JSON)[0] == 200
        assert page.csp_violations == []
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    removal = [a for a in audit if a["action"] == "allowlist.remove"]
    assert len(removal) == 1 and removal[0]["via"] == "session"
    assert removal[0]["target"] == "shop/api GET /api/items/{int}"


@pytest.mark.skipif(not browser.AXE.exists(), reason="axe-core is not in dashboard/node_modules")
def test_approve_widen_and_edit_in_the_page_and_axe_core_on_the_review(page: Any) -> None:
    with browser.serve_in_thread() as (srv, _):
        client = api_client(srv)
        client.post_observations(learned_calls())
        page.goto(f"http://127.0.0.1:{srv.ports['http']}/#token={API_TOKEN}")
        page.wait_for_selector("body[data-review-list=ready]", timeout=WAIT)
        page.select_option("#review-service", "shop/api")
        page.wait_for_selector('body[data-review="shop/api"]', timeout=WAIT)
        page.evaluate(browser.AXE.read_text())  # through DevTools: the page's CSP stays on
        result = page.evaluate(
            "async () => await axe.run('#review', {resultTypes: ['violations']})"
        )
        bad = [v["id"] for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert bad == []

        orders = page.locator('#review-rules tr[data-rule="POST /orders"]')
        orders.get_by_role("button", name="Widen: any parameter").click()
        page.locator("#review-status", has_text="Widened POST /orders").wait_for(timeout=WAIT)
        assert "any name: any" in orders.inner_text()
        orders.get_by_role("button", name="Edit").click()
        orders.get_by_label("Path template").fill("/orders/{str}")
        orders.get_by_role("button", name="Save").click()
        edited = page.locator('#review-rules tr[data-rule="POST /orders/{str}"]')
        edited.wait_for(timeout=WAIT)
        assert "approved by api-token (edited)" in edited.inner_text()
        assert orders.count() == 0
        page.get_by_role("button", name="Approve every rule (review mark)").click()
        page.locator("#review-summary", has_text="Last reviewed by api-token").wait_for(
            timeout=WAIT
        )
        statuses = page.locator("#review-rules tbody td.status").all_inner_texts()
        assert statuses and all(s.startswith("approved by api-token") for s in statuses)
        stored = client.get("/api/v1/allowlist", destination="shop/api")["services"][0]
        rule = {f"{e['method']} {e['path']}": e for e in stored["endpoints"]}["POST /orders/{str}"]
        assert rule["pinned"] is True and rule["query"] == {"*": ["any"]}
        browser.ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(browser.ARTIFACTS / "review-edited.png"), full_page=True)
        assert page.csp_violations == []
