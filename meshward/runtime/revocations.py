"""serve's revocation list on disk (`revoked` beside `ca.crt`), re-read when it changes, so every
replica sharing the CA directory or Secret refuses a revoked certificate.

Fail closed: a list that exists but cannot be read or parsed stops serve at start (a clear error
naming the line) and, when it goes bad while serve runs, refuses every mTLS call until a good list
is back (counted `peer-revocation-list-unreadable`, logged): keeping the last good list would let
a certificate revoked by the unreadable edit pass. A missing file is an empty list.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from meshward.core.peer import Refused, SpiffeId
from meshward.core.revocation import RevocationError, RevocationList, parse
from meshward.runtime.metrics import Problems

FILE_NAME = "revoked"

_Signature = tuple[int, int, int, int] | None


def _signature(path: Path) -> _Signature:
    try:
        st = os.stat(path)  # follows a Secret volume's ..data symlink
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class Revocations:
    """The current list (`refusal` judges one verified certificate against it)."""

    def __init__(self, path: Path, problems: Problems | None = None) -> None:
        self.path = path
        self.problems = problems
        self.list = RevocationList()
        self.broken = ""  # why the file on disk cannot be used ("" when it can)
        self._seen: _Signature = None

    @property
    def active(self) -> bool:
        """Whether calls must be checked at all (an empty, readable list costs nothing)."""
        return bool(self.list) or bool(self.broken)

    def load(self) -> None:
        """At start: the list, or RevocationError / OSError saying what is wrong with which file."""
        signature = _signature(self.path)
        self.list = self._read() if signature is not None else RevocationList()
        self._seen = signature
        self.broken = ""

    def refresh(self) -> bool:
        """Re-read the file when it changed (a stat otherwise); True when the state changed."""
        signature = _signature(self.path)
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            self.list = self._read() if signature is not None else RevocationList()
            self.broken = ""
        except (OSError, RevocationError) as exc:
            self.broken = str(exc)[:300]
            if self.problems is not None:
                self.problems("grpc", "revocation-list-unreadable", error=self.broken)
        return True

    def _read(self) -> RevocationList:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return RevocationList()
        except OSError as exc:
            raise OSError(f"{self.path}: {exc.strerror or exc}") from None
        try:
            return parse(data)
        except RevocationError as exc:
            named = RevocationError(0, f"{self.path}: {exc}")
            named.line = exc.line
            raise named from None

    def refusal(self, peer: SpiffeId, serial: int, not_before: datetime) -> Refused | None:
        if self.broken:
            return Refused("revocation-list-unreadable", self.broken)
        why = self.list.refuses(serial, peer.uri, not_before)
        return Refused("revoked", why) if why else None
