"""Run `meshward` commands in-process, as the console script does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

import meshward.app.cli as cli

MINE = ("learn", "score", "allowlist", "mode", "install")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def meshward(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    # only the offline commands: other sub-commands are other areas' (and may be mid-change)
    monkeypatch.setattr(cli, "COMMANDS", [c for c in cli.COMMANDS if c.rsplit(".", 1)[-1] in MINE])
    monkeypatch.delenv("MESHWARD_DB", raising=False)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse on a bad flag
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run
