"""The compiled-signature cache on disk: Hyperscan databases kept between starts.

Compiling the signatures takes a few seconds of CPU per level; a pod that loads them from this
cache starts in well under a second. The directory is `$MESHWARD_CACHE`, else
`$XDG_CACHE_HOME/meshward`, else `~/.cache/meshward`.

A database is native code's input: a file someone else could write would let them hand
Hyperscan a crafted database. So the cache is used only when the directory and the file belong
to meshward's user and nobody else may write them; anything else is ignored (and compiled
afresh), with one log line. Writes are atomic (a temp file renamed), so concurrent replicas see
an old file or a new one, never half of one. Every failure costs only the compile.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from meshward.core.engine import EngineConfig, detector_for
from meshward.core.log import event
from meshward.core.threats.inspection import Detector
from meshward.runtime.files import trusted as _safe
from meshward.runtime.files import write_atomic

log = logging.getLogger("meshward.sigcache")


def cache_dir(env: Mapping[str, str]) -> Path:
    explicit = env.get("MESHWARD_CACHE")
    if explicit:
        return Path(explicit)
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "meshward"


class FileCache:
    """`CompiledCache` over one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FileCache:
        return cls(cache_dir(os.environ if env is None else env))

    def _path(self, key: str) -> Path:
        return self.directory / f"hs-{key}.db"

    def _refuse(self, path: Path) -> None:
        if not self._warned:
            self._warned = True
            event(
                log,
                "signature cache ignored: writable by others or not ours",
                logging.WARNING,
                path=str(path),
            )

    def load(self, key: str) -> bytes | None:
        path = self._path(key)
        if not path.exists():
            return None
        if not (_safe(self.directory) and _safe(path)):
            self._refuse(path)
            return None
        try:
            return path.read_bytes()
        except OSError:
            return None

    def save(self, key: str, data: bytes) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _safe(self.directory):
                self._refuse(self.directory)
                return
            write_atomic(self._path(key), data)
        except OSError as exc:
            event(log, "signature cache not written", logging.DEBUG, error=str(exc)[:200])


def detector(config: EngineConfig, env: Mapping[str, str] | None = None) -> Detector:
    """The engine's detector with its compiled databases cached on disk."""
    return detector_for(config, FileCache.from_env(env))


def warm(levels: tuple[int, ...] = (1, 2, 3)) -> None:
    """Compile every level into the cache (the Dockerfile does this at build time)."""
    from meshward.core.threats import ThreatDetector

    cache = FileCache.from_env()
    for level in levels:
        ThreatDetector(level=level, cache=cache)
