"""The progress bar shows on a terminal only, and never on a pipe."""

from __future__ import annotations

import io

from meshward.app.progress import ByteProgress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    with ByteProgress(10 << 20, "learn", stream=out) as bar:
        assert not bar.enabled
        bar.advance(5 << 20)
        bar.print("a bad entry")
    assert out.getvalue() == "a bad entry\n"


def test_bar_on_a_terminal() -> None:
    out = _Tty()
    with ByteProgress(10 << 20, "learn", stream=out) as bar:
        assert bar.enabled
        for _ in range(10):
            bar.advance(1 << 20)
        bar.print("file.har: entry 3: request is missing")
    text = out.getvalue()
    assert "learn" in text and "file.har: entry 3: request is missing" in text


def test_small_inputs_get_no_bar() -> None:
    out = _Tty()
    with ByteProgress(1000, "score", stream=out) as bar:
        assert not bar.enabled
        bar.advance(1000)
    assert out.getvalue() == ""
