"""The dashboard's export download in a real headless Chromium: select a service in the graph,
pick a format, save the file; it is what the API serves (a valid OpenAPI document, an
AuthorizationPolicy), and the strict CSP holds. Screenshot in tests/artifacts/dashboard/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

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
    with browser.chromium() as chromium:
        context = chromium.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        page = context.new_page()
        page.csp_violations = []  # type: ignore[attr-defined]
        page.on(
            "console",
            lambda m: "Content Security Policy" in m.text and page.csp_violations.append(m.text),
        )
        try:
            yield page
        finally:
            context.close()


def _download(page: Any, tmp_path: Path) -> tuple[str, str]:
    with page.expect_download(timeout=WAIT) as info:
        page.locator("#export-download").click()
    download = info.value
    path = tmp_path / download.suggested_filename
    download.save_as(str(path))
    return download.suggested_filename, path.read_text()


def test_download_a_services_openapi_and_every_authorizationpolicy(
    page: Any, tmp_path: Path
) -> None:
    with browser.serve_in_thread() as (srv, _):
        client = api_client(srv)
        client.post_observations(learned_calls())
        client.set_mode("shop", "monitor")
        page.goto(f"http://127.0.0.1:{srv.ports['http']}/#token={API_TOKEN}")
        page.wait_for_url("**/dashboard/", timeout=WAIT)
        page.wait_for_selector("body[data-graph=ready]", timeout=WAIT)
        # a real click on the service where cytoscape drew it makes it the export's scope
        box = page.locator("#graph").bounding_box()
        at = page.evaluate("() => window.meshward.cy.$id('shop/api').renderedPosition()")
        page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])
        page.wait_for_selector("#detail[data-ready='#service=shop%2Fapi']", timeout=WAIT)
        assert page.locator("#export-scope").input_value() == "shop/api"
        page.locator("#export-format").select_option("openapi")
        name, text = _download(page, tmp_path)
        assert name == "meshward-openapi-shop-api.yaml"
        (doc,) = yaml.safe_load_all(text)
        validate(doc)
        assert text == client.request("GET", "/api/v1/exports/openapi?destination=shop/api")
        page.locator("#export-status", has_text="Saved").wait_for(timeout=WAIT)

        page.locator("#export-scope").select_option("")
        page.locator("#export-format").select_option("authorizationpolicy")
        name, text = _download(page, tmp_path)
        assert name == "meshward-authorizationpolicy.yaml"
        policies = [d for d in yaml.safe_load_all(text) if d]
        assert {p["metadata"]["name"] for p in policies} >= {"meshward-allow-api"}
        for policy in policies:
            assert policy["kind"] == "AuthorizationPolicy"
            assert policy["metadata"]["annotations"] == {"istio.io/dry-run": "true"}
        browser.ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(browser.ARTIFACTS / "export.png"), full_page=True)
        assert page.csp_violations == []
