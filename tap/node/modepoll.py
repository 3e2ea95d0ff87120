"""Namespace modes for the node tap: from `--mode NS=MODE` flags and, with `--server`, polled
from `meshward serve` (GET /api/v1/modes), so a mode changed centrally reaches every node.

The network detectors ask `mode_of(namespace)` per alert candidate (cached there for 1 s); the
poller runs in its own daemon thread and never blocks the packet loop.
"""

from __future__ import annotations

import logging
import threading

from meshward.core.log import event
from meshward.core.modes import MODES
from meshward.runtime.client import ApiClient, ApiError

log = logging.getLogger("meshward.node-tap")


def parse_mode_flags(flags: list[str]) -> dict[str, str]:
    """`["shop=enforce", ...]` -> {"shop": "enforce"}; ValueError with a one-line reason."""
    out: dict[str, str] = {}
    for flag in flags:
        ns, sep, mode = flag.partition("=")
        if not sep or not ns or mode not in MODES:
            raise ValueError(f"--mode {flag!r} is not NAMESPACE={'|'.join(MODES)}")
        out[ns] = mode
    return out


class ModeSource:
    """Modes known to this node: server-polled values, overridden by local flags."""

    def __init__(
        self,
        overrides: dict[str, str] | None = None,
        default: str = "learn",
        server: str | None = None,
        interval: float = 5.0,
        token: str | None = None,
        token_file: str | None = None,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.default = default
        self.server = server.rstrip("/") if server else None
        self.client = (
            ApiClient(self.server, token=token, timeout=2, token_file=token_file)
            if self.server
            else None
        )
        self.interval = interval
        self.polled: dict[str, str] = {}
        self.poll_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def mode_of(self, namespace: str) -> str:
        ns = namespace or "default"
        return self.overrides.get(ns) or self.polled.get(ns) or self.default

    def poll_once(self) -> bool:
        """Fetch the server's modes; keep the last good ones on failure (counted, logged)."""
        assert self.client is not None
        try:
            doc = self.client.modes()
            modes = doc.get("modes", {})
            default = doc.get("default", self.default)
            if not isinstance(modes, dict) or default not in MODES:
                raise ValueError("unexpected /api/v1/modes document")
            self.polled = {str(k): v for k, v in modes.items() if v in MODES}
            self.default = default
            return True
        except (ApiError, ValueError, AttributeError, TypeError) as exc:
            self.poll_errors += 1
            if self.poll_errors in (1, 10) or self.poll_errors % 100 == 0:
                event(
                    log,
                    "mode poll failed",
                    logging.WARNING,
                    server=self.server,
                    error=str(exc)[:200],
                    errors=self.poll_errors,
                )
            return False

    def start(self) -> None:
        if self.server is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="mode-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
            self._thread = None
