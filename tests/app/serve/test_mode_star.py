"""`meshward mode set '*' MODE` reaches a running serve: every namespace not set by name takes
it, the API reports it as the default, and it is never listed as a namespace."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from meshward.app import cli
from meshward.app.store import open_store
from meshward.core.threats.inspection import NoDetector
from meshward.runtime.client import ApiError
from tests.support.serve import api_client, running_server


def test_a_running_serve_follows_mode_set_star(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")

    async def main() -> None:
        async with running_server(db=db, detector=NoDetector(), flush_interval=0.1) as srv:
            await srv.set_mode("pay", "monitor")
            api = api_client(srv)
            before = await asyncio.to_thread(api.modes)
            assert before == {"default": "learn", "modes": {"pay": "monitor"}}
            assert (
                await asyncio.to_thread(cli.main, ["mode", "set", "*", "enforce", "--db", db]) == 0
            )
            deadline = time.monotonic() + 10
            while srv.engine.mode_of("shop") != "enforce" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert srv.engine.mode_of("shop") == "enforce"
            assert srv.engine.mode_of("pay") == "monitor"  # set by name: its own
            after = await asyncio.to_thread(api.modes)
            assert after == {"default": "enforce", "modes": {"pay": "monitor"}}

    asyncio.run(main())


def test_put_modes_star_sets_every_namespace_not_set_by_name(tmp_path: Path) -> None:
    """`PUT /api/v1/modes/*` means what `mode set '*'` means: stored, in effect at once,
    audit-logged; a namespace set by name keeps its mode; other non-names are still 400."""
    db = str(tmp_path / "m.db")

    async def main() -> None:
        async with running_server(db=db, detector=NoDetector()) as srv:
            await srv.set_mode("pay", "monitor")
            api = api_client(srv)
            got = await asyncio.to_thread(api.set_mode, "*", "enforce")
            assert got == {"namespace": "*", "mode": "enforce", "was": "learn"}
            assert srv.engine.mode_of("shop") == "enforce"
            assert srv.engine.mode_of("pay") == "monitor"
            assert await asyncio.to_thread(api.modes) == {
                "default": "enforce",
                "modes": {"pay": "monitor"},
            }
            audit = [e for e in srv.audit.entries() if e["action"] == "mode.set"]
            assert audit[-1]["target"] == "*"
            assert (audit[-1]["old"], audit[-1]["new"]) == ("learn", "enforce")
            for bad in ("**", "a*", "Shop"):
                with pytest.raises(ApiError) as err:
                    await asyncio.to_thread(api.set_mode, bad, "learn")
                assert err.value.status == 400
        store = open_store(db)
        try:
            assert store.modes() == {"pay": "monitor", "*": "enforce"}  # survives a restart
        finally:
            store.close()

    asyncio.run(main())


def test_put_modes_star_in_a_cluster_is_409_like_any_namespace() -> None:
    async def main() -> None:
        async with running_server(modes_from_labels=True) as srv:
            with pytest.raises(ApiError) as err:
                await asyncio.to_thread(api_client(srv).set_mode, "*", "enforce")
            assert err.value.status == 409
            assert "meshward.io/mode" in err.value.reason
            assert srv.engine.default_mode == "learn"

    asyncio.run(main())
