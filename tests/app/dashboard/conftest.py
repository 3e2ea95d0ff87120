"""The dashboard's browser fixtures: one headless Chromium per module, a fresh context (its
own cookies) per test, with the CSP violations its console reports collected."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import browser


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with browser.chromium() as b:
        yield b


@pytest.fixture
def page(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A module may set VIEWPORT for a taller page."""
    viewport = getattr(request.module, "VIEWPORT", {"width": 1280, "height": 900})
    context = chromium.new_context(viewport=viewport)
    page = context.new_page()
    page.csp_violations = []
    page.on(
        "console",
        lambda m: "Content Security Policy" in m.text and page.csp_violations.append(m.text),
    )
    try:
        yield page
    finally:
        context.close()
