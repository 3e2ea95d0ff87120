"""The audit log: a mode change through serve's API (who, from where, old -> new), `meshward
mode set` and `meshward allowlist import` from the command line, the file's mode, a failed
write still leaving the log event, and bounded fields."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from meshward.app.audit import AUDIT_FILE_NAME, MAX_FIELD, AuditLog
from meshward.app.auth import AuthConfig
from meshward.runtime.client import ApiClient, ApiError
from tests.support.cli import Result
from tests.support.serve import api_client, running_server


def test_api_mode_change_is_audited_with_principal_peer_and_old_new(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")

    async def main() -> None:
        async with running_server(db=db) as srv:
            client = api_client(srv)
            await asyncio.to_thread(client.set_mode, "shop", "enforce")
            await asyncio.to_thread(client.set_mode, "shop", "learn")
            stranger = ApiClient(f"http://127.0.0.1:{srv.ports['http']}", "not-the-token-at-all")
            with pytest.raises(ApiError):
                await asyncio.to_thread(stranger.set_mode, "shop", "off")

    asyncio.run(main())
    path = tmp_path / AUDIT_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = AuditLog(path).entries()
    assert [(e["action"], e["target"], e["old"], e["new"]) for e in entries] == [
        ("mode.set", "shop", "learn", "enforce"),  # new namespaces start in learn
        ("mode.set", "shop", "enforce", "learn"),
    ]  # the refused one wrote nothing
    for e in entries:
        assert (e["who"], e["via"], e["peer"]) == ("api-token", "bearer", "127.0.0.1")
        assert e["ts"].endswith("Z")


def test_cli_mode_set_and_allowlist_import_are_audited(
    tmp_path: Path, meshward: Callable[..., Result]
) -> None:
    db = str(tmp_path / "m.db")
    assert meshward("mode", "set", "shop", "monitor", "--db", db).code == 0
    doc = {
        "version": 1,
        "services": [
            {
                "destination": "shop/api",
                "endpoints": [{"method": "GET", "path": "/items", "sources": ["shop/web"]}],
            }
        ],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    done = meshward("allowlist", "import", str(tmp_path / "a.json"), "--db", db)
    assert done.code == 0, done.err
    entries = AuditLog(tmp_path / AUDIT_FILE_NAME).entries()
    assert [(e["action"], e["via"], e["peer"]) for e in entries] == [
        ("mode.set", "cli", "local"),
        ("allowlist.import", "cli", "local"),
    ]
    assert entries[0]["who"].startswith("local:")
    assert (entries[0]["old"], entries[0]["new"]) == ("learn", "monitor")
    assert entries[1]["target"] == str(tmp_path / "a.json")
    assert entries[1]["old"] == {"services": 0, "rules": 0}
    assert entries[1]["new"]["services"] == 1 and entries[1]["new"]["rules"] >= 1


def test_unwritable_file_still_logs_the_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(tmp_path / "missing-dir" / AUDIT_FILE_NAME)
    with caplog.at_level(logging.INFO, logger="meshward.audit"):
        entry = audit.record("mode.set", "x" * 5000, "shop", "enforce", "off", peer="10.0.0.9")
    assert len(entry["who"]) == MAX_FIELD
    got = {r.getMessage(): getattr(r, "fields", {}) for r in caplog.records}
    assert got["audit"]["peer"] == "10.0.0.9" and got["audit"]["new"] == "off"
    assert got["audit write failed"]["target"] == "shop"


def test_memory_store_audits_to_the_log_only() -> None:
    async def main() -> None:
        async with running_server(auth=AuthConfig(token="a-token-of-sixteen-chars")) as srv:
            assert srv.audit.path is None
            client = ApiClient(f"http://127.0.0.1:{srv.ports['http']}", "a-token-of-sixteen-chars")
            doc = await asyncio.to_thread(client.set_mode, "shop", "off")
            assert doc == {"namespace": "shop", "mode": "off", "was": "learn"}

    asyncio.run(main())
