"""End to end through a real Envoy sidecar and a real headless Chromium: traffic learned and
then seen in monitor through the sidecar, the dashboard's readiness report predicting what
enforce would deny of it, the switch made in the dashboard, and the next such request through
an enforce sidecar answered 403, its deny appearing live on the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.envoyproc import EnvoyProcess
from tests.support import browser
from tests.support.envoy_http import ServerThread, http
from tests.support.serve import API_TOKEN

pytestmark = [
    pytest.mark.integration,  # a real Envoy and an external browser
    pytest.mark.skipif(bool(browser.missing()), reason=browser.missing() or "ready"),
]
WAIT = 3 * browser.WAIT  # Envoy, serve and the browser on a shared machine: a ceiling, not a pause


def _sidecar(srv: ServerThread, app: int, mode: str, envoy_bin: str) -> EnvoyProcess:
    boot = render_bootstrap(
        0, f"127.0.0.1:{app}", "shop", "api", mode,
        authz_port=srv.ports["authz"], tap_port=srv.ports["tap"],
    )  # fmt: skip
    return EnvoyProcess(boot, envoy=envoy_bin, name=f"{mode}-sidecar")


def test_readiness_through_envoy_then_the_switch_in_the_dashboard(
    envoy_bin: str, echo_app: int, tmp_path: Path, page: Any
) -> None:
    with ServerThread(str(tmp_path / "m.db")) as srv:
        with _sidecar(srv, echo_app, "learn", envoy_bin) as envoy:
            for i in range(1, 6):
                assert http(envoy.port, f"/api/items/{i}?page={i}")[0] == 200
            srv.wait_metric('meshward_observations_total{source="envoy-tap"}', 5)
        srv.api("PUT", "/api/v1/modes/shop", {"mode": "monitor"})
        with _sidecar(srv, echo_app, "monitor", envoy_bin) as envoy:
            assert http(envoy.port, "/admin/export")[0] == 200  # monitor lets it through
            assert http(envoy.port, "/api/items/7?page=2")[0] == 200
            srv.wait_metric('meshward_observations_total{source="envoy-tap"}', 7)
        browser.log_in(page, srv.ports["http"], API_TOKEN)
        page.locator("#alerts li", has_text="/admin/export").wait_for(timeout=WAIT)
        page.locator("#modes tbody tr", has_text="shop").get_by_role("button").click()
        page.wait_for_selector("#mode-dialog[data-report=recent]", timeout=WAIT)
        assert page.locator("#readiness-summary").inner_text().startswith("Would be denied: 1.")
        examples = page.locator("#readiness-services").inner_text()
        assert "GET /admin/export" in examples and "unknown-path" in examples
        browser.shot(page, "readiness-envoy")
        page.check("#mode-confirm")
        page.click("#mode-switch")
        page.wait_for_selector("#mode-dialog[data-switched=enforce]", timeout=WAIT)
        page.locator("#mode-dialog").get_by_role("button", name="Close").click()
        with _sidecar(srv, echo_app, "enforce", envoy_bin) as envoy:
            assert http(envoy.port, "/api/items/8?page=1")[0] == 200
            assert http(envoy.port, "/admin/export")[0] == 403  # as the report said
        page.locator("#alerts li.deny", has_text="/admin/export").wait_for(timeout=WAIT)
        browser.shot(page, "enforced-envoy")
        assert page.csp_violations == []
