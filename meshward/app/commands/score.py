"""`meshward score FILE...`: one JSON line per recorded request, in input order (docs/offline.md).

Each line first says which request it judges (file, entry, method, redacted path), then the
verdict. Read-only: nothing is learned and no alert is stored, whatever the mode. The fields of a
line are only ever added to, never renamed or dropped: scripts reading them keep working.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

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
from meshward.core import redact
from meshward.core.modes import MODES
from meshward.core.observation import Observation, Verdict
from meshward.formats.common import ENTRY, FILE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score HAR files or Envoy tap traces against the stored allowlists",
        description="Write one JSON object per request to stdout: which request (file, entry, "
        "method, path), then verdict, score, reasons, threats, destination, source, rule, mode. "
        "Nothing is written to the store. A bad entry is reported on stderr, skipped and "
        "counted.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="HAR 1.2 or Envoy tap trace file")
    add_db_flag(p)
    add_engine_flags(p)
    p.add_argument(
        "--mode",
        choices=MODES,
        help="score every request in this mode (default: each namespace's stored mode)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_files(args.files)
    flusher = open_flusher(args.db, read_only=True, create=False, config=engine_config(args))
    engine = flusher.engine
    tally = Tally()
    verdicts: Counter[str] = Counter()
    out = sys.stdout
    try:
        for obs in observations(args.files, "score", tally):
            v = engine.evaluate(obs, mode=args.mode, learn=False)
            verdicts[v.verdict] += 1
            out.write(json.dumps(line(obs, v)) + "\n")
        out.flush()
    finally:
        close_flusher(flusher)
    counts = ", ".join(f"{verdicts[k]} {k}" for k in ("allow", "alert", "deny"))
    print(
        f"meshward score: {plural(tally.observations, 'request')} ({counts}), "
        f"{plural(tally.bad, 'bad entry', 'bad entries')}",
        file=sys.stderr,
    )
    return 1 if tally.observations == 0 and tally.bad else 0


def line(obs: Observation, v: Verdict) -> dict[str, object]:
    """One output line: the request judged (as its file numbers it, the path redacted), then the
    verdict's fields."""
    entry = obs.extra.get(ENTRY, "")
    where: dict[str, object] = {
        "file": obs.extra.get(FILE),
        "entry": int(entry) if entry.isdigit() else None,
        "method": obs.method,
        "path": redact.path(obs.path),
    }
    return where | v.as_dict()
