"""Run `meshward` commands in-process, as the console script does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import meshward.app.cli as cli

MINE = ("learn", "score", "allowlist", "mode", "install")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __iter__(self) -> Iterator[Any]:  # code, out, err = invoke(...)
        return iter((self.code, self.out, self.err))

    @property
    def text(self) -> str:
        """Both streams: argparse's usage errors go to stderr, help to stdout."""
        return self.out + self.err


def invoke(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """`meshward ARGV...` in this process, as the console script runs it; what it printed."""
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse on a bad flag
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return Result(code, out, err)


@pytest.fixture
def meshward(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    # only the offline commands: other sub-commands are other areas' (and may be mid-change)
    monkeypatch.setattr(cli, "COMMANDS", [c for c in cli.COMMANDS if c.rsplit(".", 1)[-1] in MINE])
    monkeypatch.delenv("MESHWARD_DB", raising=False)

    def run(*argv: str) -> Result:
        return invoke(capsys, *argv)

    return run
