"""`meshward learn FILE...`: extend the stored allowlists from recorded traffic (HAR, Envoy tap)."""

from __future__ import annotations

import argparse
import sys
import time

from meshward.app.commands import plural
from meshward.app.commands.engineflags import add_engine_flags, engine_config
from meshward.app.commands.offline import (
    Tally,
    add_db_flag,
    check_files,
    close_flusher,
    observations,
    open_flusher,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "learn",
        help="learn allowlists from HAR files or Envoy tap traces",
        description="Feed recorded requests to the engine in learn mode and store what it "
        "learned. Requests that carry a threat are not learned. A bad entry is reported on "
        "stderr, skipped and counted.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="HAR 1.2 or Envoy tap trace file")
    add_db_flag(p)
    add_engine_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_files(args.files)
    flusher = open_flusher(args.db, config=engine_config(args))
    engine = flusher.engine
    tally = Tally()
    learned_before = engine.counters["learned"]
    try:
        for obs in observations(args.files, "learn", tally):
            engine.evaluate(obs, mode="learn")
            flusher.flush_due(time.monotonic())  # a kill -9 loses at most the last interval
    finally:
        close_flusher(flusher)
    learned = engine.counters["learned"] - learned_before
    skipped = tally.observations - learned
    print(
        f"learned {plural(learned, 'request')}, skipped {skipped} (carrying threats), "
        f"{plural(tally.bad, 'bad entry', 'bad entries')}; allowlist: "
        f"{plural(len(engine.allowlist.services), 'service')}, "
        f"{plural(engine.allowlist.rule_count(), 'rule')} ({getattr(flusher.store, 'path', '')})"
    )
    sys.stdout.flush()
    return 1 if tally.observations == 0 and tally.bad else 0
