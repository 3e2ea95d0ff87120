"""Crash safety: kill -9 a process while it saves batches; nothing committed is lost or corrupt."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from meshward.app.store import open_store

ROOT = Path(__file__).resolve().parents[3]

# Each batch upserts a shared "counter" profile, five new per-batch profiles, a mode and alerts,
# then reports the batch number on stdout only after the commit returned.
WRITER = textwrap.dedent(
    """
    import sys
    from meshward.app.store import open_store
    s = open_store(sys.argv[1], alert_limit=500)
    start = int(sys.argv[2])
    i = start
    while True:
        docs = {f"b{i}-{j}/svc": {"batch": i, "pad": "x" * 200 * j} for j in range(5)}
        docs["shared/counter"] = {"batch": i}
        s.save_profiles(docs)
        s.add_alerts([{"destination": "shop/api", "batch": i}] * 3)
        print(i, flush=True)
        i += 1
    """
)


def test_kill_9_while_saving_loses_nothing_committed(tmp_path: Path) -> None:
    db = str(tmp_path / "crash.db")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    next_batch = 0
    for _round in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, db, str(next_batch)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the writer is running once it committed one batch
            assert first.strip(), f"writer died before its first batch (seed {seed})"
            time.sleep(rng.uniform(0.02, 0.4))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = [first, *out.splitlines()]
        committed = [int(x) for x in lines if x.strip()]
        last = committed[-1]
        with open_store(db) as s:
            assert s.integrity_check() == "ok", f"seed {seed}"
            profiles = s.load_profiles()
            for i in range(next_batch, last + 1):
                for j in range(5):
                    assert profiles[f"b{i}-{j}/svc"]["batch"] == i, f"batch {i} lost (seed {seed})"
            assert profiles["shared/counter"]["batch"] >= last
            assert s.alerts(limit=1)[0]["batch"] >= last
            assert len(s.alerts(limit=10_000)) <= 500
            next_batch = max(profiles["shared/counter"]["batch"], last) + 1
    assert next_batch > 5
