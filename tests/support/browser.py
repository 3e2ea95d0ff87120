"""Headless Chromium for the dashboard's tests and bench/dashboard.py: Debian's `chromium`
driven by Playwright for Python (its own browser download cannot work here), and a whole
`meshward serve` on a thread of its own (Playwright's sync API needs a thread with no loop)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from meshward.app.dashboard import ASSETS
from meshward.app.serve import Server
from tests.support.serve import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "dashboard" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "tests" / "artifacts" / "dashboard"


def missing() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    if not Path(CHROMIUM).exists():
        return "Debian's chromium is not installed (make setup installs it as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not (ASSETS / "dashboard.js").exists():
        return "the dashboard is not built (make dashboard: needs node and npm)"
    return ""


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright Browser on Debian's chromium, closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def serve_in_thread(**config: object) -> Iterator[tuple[Server, Callable[..., Any]]]:
    """A `running_server` on its own loop in a thread: yields the server and `call(fn, *args)`,
    which runs `fn` on that loop (the engine is only ever touched there) and returns its result.
    """
    ready: Future[tuple[Server, asyncio.AbstractEventLoop]] = Future()
    done = threading.Event()

    async def main() -> None:
        try:
            async with running_server(**config) as srv:
                ready.set_result((srv, asyncio.get_running_loop()))
                while not done.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    srv, loop = ready.result(timeout=30)

    def call(fn: Callable[..., Any], *args: object) -> Any:
        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=30)

    try:
        yield srv, call
    finally:
        done.set()
        thread.join(timeout=30)


WAIT = 10_000  # ms: a ceiling on each condition a browser test waits for, not a pause


def shot(page: Any, name: str) -> Path:
    """A full-page screenshot kept as a test artifact (tests/artifacts/dashboard/NAME.png)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Any, port: int, token: str) -> None:
    """The `/#token=` login, then the dashboard with its graph drawn."""
    page.goto(f"http://127.0.0.1:{port}/#token={token}")
    page.wait_for_url("**/dashboard/", timeout=WAIT)
    page.wait_for_selector("body[data-graph=ready][data-table=ready]", timeout=WAIT)


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (injected through
    the DevTools protocol, so the page's CSP stays on)."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
