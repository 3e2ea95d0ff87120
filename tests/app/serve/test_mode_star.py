"""`meshward mode set '*' MODE` reaches a running serve: every namespace not set by name takes
it, the API reports it as the default, and it is never listed as a namespace."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from meshward.app import cli
from meshward.core.threats.inspection import NoDetector
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
