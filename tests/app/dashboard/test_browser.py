"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real
`meshward serve`: the `/#token=` login (the token leaves the address bar), the graph and table
of learned traffic, a service's page on click, an alert appearing live with its evidence as
text, an axe-core check, and the strict CSP holding (no violation reported). Screenshots go to
tests/artifacts/dashboard/. Every wait is on a condition, never a sleep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import browser
from tests.support.dashboard import call, learned_calls
from tests.support.serve import API_TOKEN, api_client

pytestmark = [
    pytest.mark.integration,  # an external browser
    pytest.mark.skipif(bool(browser.missing()), reason=browser.missing() or "ready"),
]
WAIT = browser.WAIT


def _shot(page: Any, name: str) -> Path:
    return browser.shot(page, name)


def _log_in(page: Any, port: int) -> None:
    browser.log_in(page, port, API_TOKEN)


def test_login_link_then_the_graph_table_and_rules_of_learned_traffic(page: Any) -> None:
    with browser.serve_in_thread() as (srv, _):
        api_client(srv).post_observations(learned_calls())
        _log_in(page, srv.ports["http"])
        assert API_TOKEN not in page.url and "#" not in page.url
        assert page.evaluate("() => sessionStorage.getItem('meshward.csrf')")
        graph = api_client(srv).get("/api/v1/graph")
        ids = page.evaluate("() => window.meshward.cy.nodes().map(n => n.id()).sort()")
        assert ids == sorted(n["id"] for n in graph["nodes"])
        rows = page.locator("#edges tbody tr")
        assert rows.count() == len(graph["edges"]) == 3
        assert rows.filter(has_text="POST /orders").locator("td").first.inner_text() == "shop/web"
        # a real click on the node where cytoscape drew it
        box = page.locator("#graph").bounding_box()
        at = page.evaluate("() => window.meshward.cy.$id('shop/api').renderedPosition()")
        page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
        page.wait_for_selector("#detail[data-ready='#service=shop%2Fapi']", timeout=WAIT)
        assert page.locator("#detail-title").inner_text() == "Service shop/api"
        assert "POST /orders" in page.locator("#rules-list").inner_text()
        _shot(page, "graph")
        assert page.csp_violations == []


def test_an_alert_appears_live_with_its_evidence_as_text(page: Any, tmp_path: Path) -> None:
    # a store on disk: the real detectors, alerts read back from the history as serve keeps it
    with browser.serve_in_thread(db=str(tmp_path / "m.db")) as (srv, _):
        client = api_client(srv)
        client.post_observations(learned_calls())
        client.set_mode("shop", "monitor")
        _log_in(page, srv.ports["http"])
        page.wait_for_selector("body[data-alerts=live]", timeout=WAIT)
        assert page.locator("#alerts li").count() == 0
        payload = "<img src=x onerror=alert(document.domain)>"
        client.post_observations([call("shop/web", "shop/api", "GET", "/users/1", f"q={payload}")])
        item = page.locator("#alerts li").first
        item.wait_for(timeout=WAIT)
        text = item.inner_text()
        assert "shop/web → shop/api GET /users/1" in text
        evidence = item.locator(".evidence").first.inner_text()
        # stored HTML-escaped, shown decoded as the text it is
        assert "<img src=x onerror" in evidence and "&lt;" not in evidence
        assert page.locator("#alerts img").count() == 0  # never made into markup
        assert page.evaluate("() => document.images.length") == 0
        # counted on its edge at once: the table's row and the graph's edge say alerted
        row = page.locator("#edges tbody tr", has_text="GET /users/{int}")
        row.locator("td", has_text="alerted").wait_for(timeout=WAIT)
        status = "() => window.meshward.cy.$id('shop/web->shop/api').data('status')"
        assert page.evaluate(status) == "alerted"
        _shot(page, "alert")
        assert page.csp_violations == []


@pytest.mark.skipif(not browser.AXE.exists(), reason="axe-core is not in dashboard/node_modules")
def test_axe_core_finds_no_serious_or_critical_violation(page: Any, tmp_path: Path) -> None:
    with browser.serve_in_thread() as (srv, _):
        client = api_client(srv)
        client.post_observations(learned_calls())
        client.set_mode("shop", "monitor")
        client.post_observations([call("shop/web", "shop/api", "DELETE", "/users/1")])
        _log_in(page, srv.ports["http"])
        page.locator("#alerts li").first.wait_for(timeout=WAIT)
        # evaluated through the DevTools protocol: the page's CSP (script from self) stays on
        page.evaluate(browser.AXE.read_text())
        result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
        bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
        (tmp_path / "axe.json").write_text(json.dumps(result["violations"], indent=1))
        _shot(page, "axe")
        assert bad == [], json.dumps(
            [(v["id"], v["impact"], v["help"], len(v["nodes"])) for v in bad], indent=1
        )
