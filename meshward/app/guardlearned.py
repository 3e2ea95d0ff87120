"""The learned allowlists the mesh guard compares ALLOW policies with (`Mesh.Policy.Widened`
"wider than learned", docs/mesh-guard.md), read from serve.

The controller reads them through the one API client (meshward.runtime.client) with the token it
sends its findings with (in a cluster a projected ServiceAccount token, audience `meshward`):
`GET /api/v1/allowlist`, which needs `list allowlists.meshward.io` (the controller's ClusterRole
holds that and no other read of serve's API). The copy is refreshed every `refresh` seconds
(learning goes on, a review edits rules); when serve cannot be reached the last copy is used
until it is `max_age` old, then the guard says in its findings that the comparison was not
made, and logs and counts it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshward.core.allowlist import Allowlist
from meshward.core.log import event
from meshward.core.meshguard import Learned

log = logging.getLogger("meshward.controller")

NO_SERVER = "the controller has no --server to read them from"
NOT_YET = "not read from serve yet"


@dataclass
class LearnedCounters:
    reads: int = 0  # reads that succeeded
    failures: int = 0  # reads that failed (serve unreachable, refused, an unreadable answer)
    changes: int = 0  # reads whose content differed from the copy held


class LearnedAllowlists:
    """The cached copy, and its refresh. `read()` is called by the guard's refresh thread;
    `current()` by the rules (through the guard's Scope)."""

    def __init__(
        self,
        client: Any,  # meshward.runtime.client.ApiClient, or None: never compared
        *,
        refresh: float = 30.0,
        max_age: float = 300.0,
        trust_domain: str = "cluster.local",
        selector_label: str = "app",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.refresh = refresh
        self.max_age = max_age
        self.trust_domain = trust_domain
        self.selector_label = selector_label
        self.clock = clock
        self.counters = LearnedCounters()
        self._learned = self._missing(NO_SERVER if client is None else NOT_YET)
        self._digest = ""
        self._read_at: float | None = None  # clock time of the copy held
        self._error = ""

    def _missing(self, why: str) -> Learned:
        return Learned(None, why, self.trust_domain, self.selector_label)

    def current(self) -> Learned:
        return self._learned

    def read(self) -> bool:
        """Read serve's allowlists; True when what the rules see changed (a new copy, or the
        copy lost), so the guard judges its policies again. The whole document is kept (the
        rules only look up the destinations of watched namespaces): the namespaces' watch may
        not have listed yet, and serve bounds the document (meshward.core.allowlist.Limits)."""
        if self.client is None:
            return False
        from meshward.runtime.client import ApiError

        try:
            doc = self.client.allowlist()
            allowlist = Allowlist()
            allowlist.import_doc(doc)
        except (ApiError, ValueError, TypeError) as exc:
            return self._failed(str(exc))
        digest = compared_digest(allowlist)
        if digest == self._digest and self._learned.allowlist is not None:
            # what the comparison reads is the same (counts and value classes may have
            # moved): keep the copy held, and what the rules made of it
            self._read_at, self._error = self.clock(), ""
            self.counters.reads += 1
            return False
        self.counters.reads += 1
        self.counters.changes += 1
        self._read_at, self._digest, self._error = self.clock(), digest, ""
        self._learned = Learned(allowlist, "", self.trust_domain, self.selector_label)
        event(log, "learned allowlists read", destinations=len(allowlist.services))
        return True

    def _failed(self, error: str) -> bool:
        self.counters.failures += 1
        first = not self._error
        self._error = error[:200]
        held = self._learned.allowlist is not None
        stale = self._read_at is None or self.clock() - self._read_at > self.max_age
        if first:
            event(
                log,
                "learned allowlists not read",
                logging.WARNING,
                error=self._error,
                using="the last copy" if held and not stale else "the universal rules only",
            )
        if held and not stale:
            return False
        if held or self._learned.missing == NOT_YET:
            event(
                log,
                "learned comparison off: policies judged by the universal rules only",
                logging.WARNING,
                error=self._error,
            )
            self._learned = self._missing(f"serve's allowlists could not be read ({self._error})")
            self._digest = ""
            return held
        return False

    def age(self) -> float | None:
        """Seconds since the copy held was read (None: none held)."""
        if self._read_at is None or self._learned.allowlist is None:
            return None
        return self.clock() - self._read_at


def compared_digest(allowlist: Allowlist) -> str:
    """A digest of what the comparison reads (callers, and each rule's method, template and
    callers), so a read whose counts or value classes moved changes nothing."""
    shape = [
        (key, sorted(p.sources), [(r.method, r.template, sorted(r.sources)) for r in p.rules()])
        for key, p in sorted(allowlist.services.items())
    ]
    return hashlib.sha256(json.dumps(shape, separators=(",", ":")).encode()).hexdigest()
