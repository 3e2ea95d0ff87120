"""The audit log: who changed what meshward enforces, when, from where, old -> new.

Every namespace mode change (the API's `PUT /api/v1/modes/NS`, `meshward mode set`) and every
allowlist import or edit (`meshward allowlist import`, the review's `POST /api/v1/review`:
`allowlist.approve|remove|widen|edit`, meshward.app.reviewapi) is one JSON line in
`audit.jsonl` beside the store (mode 0600, append-only writes) and one `audit` log event with
the same fields, so the record survives in the log even when the file cannot be written (that
failure is logged at ERROR). Learning is not an edit: what the engine learns from traffic is
the allowlist's normal life and is counted by the metrics, not audited.

    {"ts": "2026-12-06T05:01:02.345Z", "action": "mode.set", "who": "api-token",
     "via": "bearer", "peer": "10.0.3.7", "target": "shop", "old": "enforce", "new": "learn"}
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshward.core.log import event

log = logging.getLogger("meshward.audit")

AUDIT_FILE_NAME = "audit.jsonl"
MAX_FIELD = 512  # characters kept of one field (a principal, a target, a summary)


def state_dir(db: str) -> str | None:
    """The directory beside a store file where its companions go (the API token, the audit
    log); None for a store without a file (`:memory:`)."""
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return os.path.dirname(os.path.abspath(db))


def local_user() -> str:
    """Who runs a command on this machine, for CLI entries (`local:NAME`)."""
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"local:uid={os.getuid()}"


@dataclass
class AuditLog:
    """Appends audit records to `path` (None: the log event only)."""

    path: Path | None

    @classmethod
    def beside(cls, db: str) -> AuditLog:
        where = state_dir(db)
        return cls(Path(where) / AUDIT_FILE_NAME if where else None)

    def record(
        self,
        action: str,
        who: str,
        target: str,
        old: Any,
        new: Any,
        *,
        via: str = "",
        peer: str = "",
        now: float | None = None,
    ) -> dict[str, Any]:
        """Write one record (blocking: call it off the event loop) and return it."""
        ts = time.time() if now is None else now
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
        entry = {
            "ts": f"{stamp}.{int(ts % 1 * 1000):03d}Z",
            "action": action,
            "who": _clip(who),
            "via": via,
            "peer": _clip(peer),
            "target": _clip(target),
            "old": _clip(old),
            "new": _clip(new),
        }
        event(log, "audit", **{k: v for k, v in entry.items() if k != "ts"})
        if self.path is not None:
            try:
                self._append(json.dumps(entry, ensure_ascii=True, sort_keys=False) + "\n")
            except OSError as exc:
                event(
                    log,
                    "audit write failed",
                    logging.ERROR,
                    path=str(self.path),
                    error=exc.strerror or str(exc),
                    action=action,
                    target=entry["target"],
                )
        return entry

    def _append(self, line: str) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())  # one write of one line: O_APPEND keeps lines whole
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        """Every record in the file (tests, tools)."""
        if self.path is None or not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def _clip(value: Any) -> Any:
    """Bounded fields: strings cut at MAX_FIELD, mappings of numbers and strings kept."""
    if isinstance(value, str):
        return value[:MAX_FIELD]
    if isinstance(value, dict):
        return {str(k)[:64]: _clip(v) for k, v in list(value.items())[:16]}
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return str(value)[:MAX_FIELD]
