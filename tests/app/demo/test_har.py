"""`meshward demo --write-har DIR`: the shop's traffic as HAR files, for the README's offline
quick start; learned and scored through the CLI as a newcomer would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshward.app import cli


def test_the_quick_start_on_the_demo_shops_har_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--write-har", "ex"]) == 0
    out = capsys.readouterr().out
    assert "wrote ex/normal.har (400 requests)" in out and "wrote ex/suspicious.har (18" in out
    doc = json.loads((tmp_path / "ex" / "normal.har").read_text())
    assert doc["log"]["version"] == "1.2" and len(doc["log"]["entries"]) == 400
    assert (tmp_path / "ex" / "normal.har").read_bytes() == _again(tmp_path)  # the same each time
    assert cli.main(["learn", "ex/normal.har", "--db", "shop.db"]) == 0
    assert cli.main(["mode", "set", "shop", "enforce", "--db", "shop.db"]) == 0
    capsys.readouterr()
    assert cli.main(["score", "ex/suspicious.har", "--db", "shop.db"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [d["verdict"] for d in lines] == ["allow"] * 10 + ["deny"] * 8
    threats = {t["name"] for d in lines for t in d["threats"]}
    assert threats >= {"SQL.Injection", "Cross.Site.Scripting", "Path.Traversal", "JNDI.Injection"}
    assert {tuple(d["reasons"]) for d in lines[-2:]} == {("unknown-path",), ("unknown-method",)}


def _again(tmp_path: Path) -> bytes:
    assert cli.main(["demo", "--write-har", str(tmp_path / "again")]) == 0
    return (tmp_path / "again" / "normal.har").read_bytes()
