"""What the offline commands share: checking input files, opening the store and the engine,
walking the inputs with a progress bar and one stderr line per bad entry.

Every request is judged by the engine, as serve judges what it is sent: threats an input claims
for a request are dropped first (meshward.core.claims, the rule serve's ingest door follows),
so a file cannot make `learn` skip a request or `score` alert on it by saying so.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass

from meshward.app.commands import UsageError
from meshward.app.flusher import Flusher
from meshward.app.progress import ByteProgress
from meshward.app.store import ReadOnlyStore, SqliteStore, StoreError, default_path, open_store
from meshward.core.claims import distrusted
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Observation
from meshward.formats import EntryError, read_observations


def add_db_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        help=f"SQLite store (default: $MESHWARD_DB, else ./meshward.db; now {default_path()})",
    )


def check_files(paths: list[str]) -> None:
    """A missing or unreadable input is a usage error: nothing is processed."""
    for p in paths:
        if not os.path.exists(p):
            raise UsageError(f"{p}: no such file")
        if os.path.isdir(p):
            raise UsageError(f"{p}: is a directory (give the files inside it)")
        if not os.access(p, os.R_OK):
            raise UsageError(f"{p}: not readable")


def store_for(db: str | None, *, create: bool = True) -> SqliteStore:
    try:
        return open_store(db, create=create)
    except StoreError as exc:
        raise UsageError(str(exc)) from exc


def open_flusher(
    db: str | None,
    *,
    read_only: bool = False,
    create: bool = True,
    threats: bool = True,
    config: EngineConfig | None = None,
) -> Flusher:
    """The engine loaded from the store, with the flusher that writes what it learns
    (`.engine`, `.store`); read_only: profiles and modes are read, nothing is written.

    threats=False skips compiling the threat detectors (allowlist commands score nothing).
    """
    store = store_for(db, create=create)
    try:
        config = config or EngineConfig(threats=threats)
        from meshward.app import sigcache

        flusher = Flusher(
            Engine(config, sigcache.detector(config)),
            ReadOnlyStore(store) if read_only else store,
        )
        flusher.load()
        return flusher
    except StoreError as exc:
        store.close()
        raise UsageError(str(exc)) from exc


def close_flusher(flusher: Flusher) -> None:
    """The last batch written, the store closed."""
    try:
        flusher.close()
    except StoreError as exc:
        raise UsageError(f"saving failed: {exc}") from exc


@dataclass
class Tally:
    observations: int = 0
    bad: int = 0
    claimed: int = 0  # threats the inputs claimed (dropped: the engine judges)


def observations(paths: list[str], what: str, tally: Tally) -> Iterator[Observation]:
    """Every Observation of the inputs, in order, without the threats it claims (counted, said
    once on stderr); bad entries go to stderr and are counted."""
    total = sum(os.path.getsize(p) for p in paths)
    with ByteProgress(total, what) as bar:
        for item in read_observations(paths, progress=bar.advance):
            if isinstance(item, EntryError):
                tally.bad += 1
                bar.print(f"meshward {what}: skipped {item}")
                continue
            tally.observations += 1
            obs, dropped = distrusted(item)
            tally.claimed += dropped
            yield obs
        if tally.claimed:
            bar.print(
                f"meshward {what}: ignored {tally.claimed} threats written in the input "
                "(meshward judges every request itself)"
            )
