"""`meshward alerts`: the newest alerts of a store, as a table on a terminal, JSON Lines in a pipe
(the command the demo's --keep-running points at)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from meshward.app import sigcache
from meshward.app.store import open_store
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Identity, Observation
from tests.support.cli import invoke


def _store_with_alerts(db: Path) -> None:
    """Alerts as the engine makes them (redacted), stored as serve stores them."""
    config = EngineConfig()
    engine = Engine(config, sigcache.detector(config))  # compiled once, cached on disk
    for i in range(3):
        engine.evaluate(
            Observation(
                "file",
                source=Identity.parse("shop/web"),
                destination=Identity.parse("shop/api"),
                method="GET",
                path=f"/users/{i}",
                query="id=1%27%20OR%20%271%27%3D%271",
                time=1795514400.0 + i,
            ),
            mode="enforce",
        )
    with open_store(str(db)) as store:
        store.add_alerts(engine.pending_alerts())


def test_alerts_of_a_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "m.db"
    _store_with_alerts(db)
    code, out, _ = invoke(capsys, "alerts", "--db", str(db), "--limit", "2")
    lines = [json.loads(x) for x in out.splitlines()]  # not a terminal: JSON Lines
    assert code == 0 and len(lines) == 2
    assert [a["path"] for a in lines] == ["/users/2", "/users/1"]  # newest first
    assert lines[0]["verdict"] == "deny" and lines[0]["threats"][0]["name"] == "SQL.Injection"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = invoke(capsys, "alerts", "--db", str(db), "--namespace", "shop")
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert code == 0 and out.startswith("meshward alerts: the newest 3 alerts, newest first")
    assert max(len(x) for x in out.splitlines()) <= 80, out
    assert "2026-11-24" in out and "10:00:02" in out and "GET /users/2" in out
    assert "shop/web -> shop/api" in out
    assert "SQL.Injection" in out
    code, out, _ = invoke(capsys, "alerts", "--db", str(db), "--namespace", "other")
    assert "the newest 0 alerts" in out


def test_alerts_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = str(tmp_path / "none.db")
    assert invoke(capsys, "alerts", "--db", db).code == 2  # no store there: not created
    assert not Path(db).exists()
    code, _, err = invoke(capsys, "alerts", "--db", db, "--limit", "0")
    assert code == 2 and "--limit must be 1..1000" in err
    code, _, err = invoke(capsys, "alerts", "--namespace", "Bad_NS")
    assert code == 2 and "not a Kubernetes namespace name" in err
