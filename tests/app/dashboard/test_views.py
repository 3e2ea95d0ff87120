"""The dashboard's views in a real headless Chromium against a real `meshward serve`: the
window picker, a service's page and a call's page (reached by real clicks on the graph and
the table), the live alerts' filters, and a mode switch behind its confirmation and its
enforce-readiness report (recent calls and an uploaded HAR), with the report's prediction
then borne out; in a cluster, the report and the `kubectl label` command instead of a switch.
axe-core finds no serious or critical violation on each; screenshots go to
tests/artifacts/dashboard/. Every wait is on a condition, never a sleep."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.support import browser
from tests.support.dashboard import call, har, learned_calls
from tests.support.serve import API_TOKEN, api_client

pytestmark = [
    pytest.mark.integration,  # an external browser
    pytest.mark.skipif(bool(browser.missing()), reason=browser.missing() or "ready"),
]
WAIT = browser.WAIT
AXE = pytest.mark.skipif(not browser.AXE.exists(), reason="axe-core is not in node_modules")


def _no_serious_violations(page: Any) -> None:
    bad = browser.axe_violations(page)
    assert bad == [], json.dumps([(v["id"], v["help"], len(v["nodes"])) for v in bad], indent=1)


def _click_graph(page: Any, script: str, then: str) -> None:
    """A real mouse click where cytoscape drew something (`script` gives its position), until
    the `then` selector shows. The graph is scrolled into view first (a service page opens its
    review beside it, which can push the graph below the fold), and the click is repeated in
    case a live refresh moved the graph as it landed."""
    for _ in range(5):
        page.locator("#graph").scroll_into_view_if_needed()  # the pages above may push it down
        box = page.locator("#graph").bounding_box()
        at = page.evaluate(script)
        page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
        try:
            page.wait_for_selector(then, timeout=3000)
            return
        except PlaywrightTimeout:  # click again where it is now
            continue
    page.wait_for_selector(then, timeout=WAIT)


@AXE
def test_window_picker_and_the_pages_of_a_service_and_a_call(page: Any) -> None:
    with browser.serve_in_thread() as (srv, _):
        client = api_client(srv)
        client.post_observations(learned_calls())
        client.set_mode("shop", "monitor")
        client.post_observations([call("shop/web", "shop/api", "DELETE", "/users/1")])
        browser.log_in(page, srv.ports["http"], API_TOKEN)
        page.locator("#alerts li").first.wait_for(timeout=WAIT)
        # the window: the graph is fetched again for it, and the page says which
        with page.expect_request(lambda r: "/api/v1/graph?window=900" in r.url):
            page.select_option("#window", "900")
        page.locator(".legend .window-name", has_text="last 15 minutes").wait_for(timeout=WAIT)
        # a service's page from the table (the graph's accessible form)
        page.locator("#edges tbody a", has_text="shop/api").first.click()
        page.wait_for_selector("#detail[data-ready='#service=shop%2Fapi']", timeout=WAIT)
        detail = page.locator("#detail")
        assert page.locator("#detail-title").inner_text() == "Service shop/api"
        assert page.evaluate("() => document.activeElement.id") == "detail-title"
        callers = detail.locator("table").first
        assert "shop/web" in callers.inner_text() and "billing/worker" in callers.inner_text()
        assert "monitor" in detail.locator(".facts").inner_text()
        assert "GET /users/{int}" in page.locator("#rules-list").inner_text()
        assert "DELETE /users/1" in detail.locator(".alert-list").inner_text()
        _no_serious_violations(page)
        browser.shot(page, "service-page")
        # a call's page from a real click on its edge in the graph
        _click_graph(
            page,
            "() => window.meshward.cy.$id('shop/api->shop/db').renderedMidpoint()",
            "#detail[data-page=call][data-ready]",
        )
        assert page.locator("#detail-title").inner_text() == "Calls shop/api → shop/db"
        assert "GET /rows/{int}" in detail.locator(".rules").inner_text()
        rows = detail.locator("table tbody tr")
        allowed = sum(
            int(rows.nth(i).locator("td").nth(1).inner_text()) for i in range(rows.count())
        )
        assert allowed == 3  # the three learned calls, in their time step
        assert detail.locator(".bar .allowed").count() == rows.count()
        _no_serious_violations(page)
        browser.shot(page, "call-page")
        page.go_back()  # the address names the page: Back shows the service again
        page.wait_for_selector("#detail[data-ready='#service=shop%2Fapi']", timeout=WAIT)
        assert page.csp_violations == []


@AXE
def test_alert_filters_by_service_threat_reason_and_time(page: Any, tmp_path: Path) -> None:
    # a store on disk: the real detectors; written only when the test says (flush below)
    db = str(tmp_path / "m.db")
    with browser.serve_in_thread(db=db, flush_interval=3600.0) as (srv, on_loop):
        client = api_client(srv)
        client.post_observations(learned_calls())
        client.set_mode("shop", "monitor")
        xss = "<img src=x onerror=alert(document.domain)>"
        old = call("shop/web", "shop/db", "PUT", "/rows/9")
        old["time"] = time.time() - 7200  # two hours ago
        client.post_observations(
            [
                call("shop/web", "shop/api", "GET", "/users/1", f"q={xss}"),
                call("shop/web", "shop/api", "DELETE", "/users/1"),
                old,
            ]
        )
        threat = next(t["name"] for a in client.alerts() for t in a["threats"])
        browser.log_in(page, srv.ports["http"], API_TOKEN)
        items = page.locator("#alerts li")
        page.wait_for_function("() => document.querySelectorAll('#alerts li').length === 3")
        page.fill("#alert-service", "shop/db")
        page.wait_for_function("() => document.querySelectorAll('#alerts li').length === 1")
        assert "PUT /rows/9" in items.first.inner_text()
        assert page.locator("#alert-count").inner_text() == "1 of 3 alerts match"
        page.click("#alert-clear")
        page.fill("#alert-threat", threat.split(".")[0].lower())
        page.wait_for_function("() => document.querySelectorAll('#alerts li').length === 1")
        shown = items.first
        evidence = shown.locator(".evidence").inner_text()
        assert "<img src=x onerror" in evidence and "&lt;" not in evidence  # decoded, as text
        assert page.evaluate("() => document.images.length") == 0
        assert "reasons:" in shown.locator(".acted").inner_text() or "mode" in shown.inner_text()
        page.click("#alert-clear")
        page.fill("#alert-reason", "unknown-method")
        page.wait_for_function("() => document.querySelectorAll('#alerts li').length === 2")
        acted = items.first.locator(".acted").inner_text()
        assert "unknown-method" in acted and "mode monitor" in acted
        page.select_option("#alert-time", "3600")  # the two-hour-old one goes
        page.wait_for_function("() => document.querySelectorAll('#alerts li').length === 1")
        assert "DELETE /users/1" in items.first.inner_text()
        _no_serious_violations(page)
        browser.shot(page, "alert-filters")
        # the page got them pending; once the store has written them (with its row ids), the
        # stream does not send them again: a new alert after the write arrives alone
        assert not any("id" in a for a in client.alerts())
        on_loop(srv.flusher.flush)
        assert all("id" in a for a in client.alerts())
        client.post_observations([call("shop/web", "shop/api", "PATCH", "/users/1")])
        page.click("#alert-clear")
        items.filter(has_text="PATCH /users/1").wait_for(timeout=WAIT)
        assert page.locator("#alert-count").inner_text() == "4 alerts"
        assert page.csp_violations == []


@AXE
def test_mode_switch_behind_its_readiness_report(page: Any, tmp_path: Path) -> None:
    with browser.serve_in_thread() as (srv, _):
        client = api_client(srv)
        client.post_observations(learned_calls())
        client.set_mode("shop", "monitor")
        unseen = call("shop/web", "shop/api", "DELETE", "/users/1")
        client.post_observations([unseen])
        browser.log_in(page, srv.ports["http"], API_TOKEN)
        page.locator("#modes tbody tr", has_text="shop").get_by_role("button").click()
        dialog = page.locator("#mode-dialog")
        page.wait_for_selector("#mode-dialog[data-report=recent]", timeout=WAIT)
        assert page.locator("#mode-dialog-title").inner_text() == "Mode of shop: now monitor"
        assert page.locator("#mode-target").input_value() == "enforce"
        summary = page.locator("#readiness-summary").inner_text()
        assert summary == "Would be denied: 1. Would be alerted: 0."
        row = page.locator("#readiness-services tbody tr")
        assert row.count() == 1
        cells = row.locator("td")
        assert cells.nth(0).inner_text() == "shop/api" and cells.nth(2).inner_text() == "1"
        assert "unknown-method" in cells.nth(4).inner_text()
        assert "DELETE /users/1 from shop/web" in cells.nth(5).inner_text()
        # the confirmation: no switch before it is ticked
        assert page.locator("#mode-switch").is_disabled()
        _no_serious_violations(page)
        browser.shot(page, "readiness-recent")
        # an uploaded HAR replayed instead
        path = tmp_path / "typical.har"
        path.write_bytes(
            har(
                [
                    ("shop/web", "shop/api", "GET", "/users/5"),
                    ("shop/web", "shop/api", "GET", "/admin"),
                ]
            )
        )
        page.set_input_files("#mode-har", str(path))
        page.wait_for_selector("#mode-dialog[data-report=har]", timeout=WAIT)
        assert "2 requests of the uploaded HAR" in page.locator("#readiness").inner_text()
        assert (
            page.locator("#readiness-summary").inner_text()
            == "Would be denied: 1. Would be alerted: 0."
        )
        browser.shot(page, "readiness-har")
        label = page.locator("#mode-confirm-label").inner_text()
        assert label.startswith("Yes, switch shop from monitor to enforce")
        page.check("#mode-confirm")
        page.click("#mode-switch")
        page.wait_for_selector("#mode-dialog[data-switched=enforce]", timeout=WAIT)
        assert "shop is now in enforce (was monitor)" in page.locator("#mode-result").inner_text()
        assert client.modes()["modes"]["shop"] == "enforce"
        assert dialog.get_by_role("button", name="Close").is_visible()
        page.locator("#modes tbody tr", has_text="shop").locator("td", has_text="enforce").wait_for(
            timeout=WAIT
        )
        browser.shot(page, "mode-switched")
        # what the report said would be denied is denied now
        client.post_observations([unseen])
        page.locator("#alerts li.deny", has_text="DELETE /users/1").wait_for(timeout=WAIT)
        assert client.alerts(1)[0]["verdict"] == "deny"
        assert page.csp_violations == []


def test_in_a_cluster_the_report_then_the_kubectl_label_command(page: Any) -> None:
    with browser.serve_in_thread(modes_from_labels=True) as (srv, _):
        api_client(srv).post_observations(learned_calls())
        browser.log_in(page, srv.ports["http"], API_TOKEN)
        page.locator("#modes tbody tr", has_text="shop").get_by_role("button").click()
        page.wait_for_selector("#mode-dialog[data-report=recent]", timeout=WAIT)
        assert (
            page.locator("#readiness-summary").inner_text()
            == "Would be denied: 0. Would be alerted: 0."
        )
        assert page.locator("#mode-switch").is_hidden()
        command = page.locator("#mode-command").inner_text()
        assert command == "kubectl label namespace shop meshward.io/mode=monitor --overwrite"
        page.select_option("#mode-target", "enforce")
        page.locator("#mode-command", has_text="mode=enforce").wait_for(timeout=WAIT)
        browser.shot(page, "readiness-cluster")
        assert page.csp_violations == []
