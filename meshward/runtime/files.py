"""Files meshward keeps between runs: trusted only when nobody else may write them, replaced
atomically so a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def trusted(path: Path) -> bool:
    """Owned by us (or root) and writable by nobody else."""
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write a 0600 temp file beside `path` and rename it over `path` (raises OSError).

    `durable`: fsync the file and its directory, so the new content survives a power loss,
    not only a crash of this process."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
