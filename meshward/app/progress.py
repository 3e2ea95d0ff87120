"""A progress bar for long offline runs (`learn`, `score`): on stderr, only when it is a terminal.

Elsewhere (pipes, CI logs, tests) it does nothing, so stdout stays clean JSON Lines and stderr
keeps only the lines that matter.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

MIN_BYTES = 1 << 20  # smaller inputs finish before a bar would help
REFRESH = 0.1  # seconds between bar updates: advance() is called per request


class ByteProgress:
    """Bytes of input consumed out of `total`; use as a context manager, call `advance(n)`."""

    def __init__(
        self,
        total: int,
        description: str,
        stream: TextIO | None = None,
        min_bytes: int = MIN_BYTES,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.description = description
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) and total >= min_bytes
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._pending = 0
        self._last = 0.0

    def __enter__(self) -> ByteProgress:
        if self.enabled:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._bar is None or self._task is None:
            return
        self._pending += n
        now = time.monotonic()
        if now - self._last >= REFRESH:
            self._bar.advance(self._task, self._pending)
            self._pending = 0
            self._last = now

    def print(self, line: str) -> None:
        """One line on stderr without tearing the bar."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
