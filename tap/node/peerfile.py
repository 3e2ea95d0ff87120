"""The UDP peer baseline kept on the node, so a restarted agent still knows each workload's peers.

Why a file on the node, not serve's store: the UDP detectors run per node on what that node
sees, so the node's own view is the baseline they need, and it works while serve is down or
unreachable. A node writes only its own file (a hostPath directory of the DaemonSet), so a
compromised node cannot teach its false peers to other nodes, and serve's ingest API grows no
write door for baselines. The cost: a pod rescheduled to a node that never saw its workload
starts there without a baseline (learn mode fills it; monitor mode alerts its peers once each).

The file is JSON, written atomically (temp file, fsync, rename) at most every `interval`
seconds when peers were learned, and when the agent stops. Its size is bounded: the monitor's
caps (`max_workloads` × `max_peers`) bound what is saved, and a file past `max_bytes` is
neither written nor read. A file others could write, or a broken one, is ignored with one log
line (the agent starts with an empty baseline; its next save replaces the file).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from meshward.core.log import event
from meshward.runtime.files import trusted, write_atomic

log = logging.getLogger("meshward.node-tap")
VERSION = 1
Peer = tuple[str, str, int]  # direction, peer, service port
Baseline = dict[str, list[Peer]]


def _peers(items: object) -> list[Peer]:
    """The valid (direction, peer, port) triples of one workload's list; others are skipped."""
    out: list[Peer] = []
    for item in items if isinstance(items, list) else []:
        if not (isinstance(item, list) and len(item) == 3):
            continue
        direction, peer, port = item
        if (
            direction in ("in", "out")
            and isinstance(peer, str)
            and 0 < len(peer) <= 512
            and isinstance(port, int)
            and not isinstance(port, bool)
            and 0 <= port <= 65535
        ):
            out.append((direction, peer, port))
    return out


def decode(data: bytes) -> Baseline:
    """Parse a baseline file (raises ValueError on anything but a version-1 document)."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError("not a version-1 UDP peer baseline")
    workloads = doc.get("workloads")
    if not isinstance(workloads, dict):
        raise ValueError("no workloads mapping")
    return {k: _peers(v) for k, v in workloads.items() if isinstance(k, str) and 0 < len(k) <= 512}


def encode(baseline: Baseline) -> bytes:
    doc: dict[str, Any] = {"version": VERSION, "workloads": baseline}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


class PeerFile:
    """Load once at start; `maybe_save(monitor)` from the packet loop's tick; `save` at stop.

    The snapshot is taken on the packet loop (the monitor's only thread) and written by a
    short-lived writer thread, so a slow disk never stalls packet reading."""

    def __init__(self, path: str | Path, interval: float = 30.0, max_bytes: int = 16 << 20):
        self.path = Path(path)
        self.interval = interval
        self.max_bytes = max_bytes
        self.saved_changes = -1  # the monitor's baseline_changes at the last snapshot
        self.next_save = 0.0
        self.writes = 0
        self.failures = 0
        self._writer: threading.Thread | None = None

    def load(self) -> Baseline:
        """The saved baseline, or {} (missing, untrusted, too big or broken: logged)."""
        try:
            if not self.path.exists():
                return {}
            if not (trusted(self.path.parent) and trusted(self.path)):
                raise ValueError("writable by others or not ours")
            if self.path.stat().st_size > self.max_bytes:
                raise ValueError(f"larger than {self.max_bytes} bytes")
            baseline = decode(self.path.read_bytes())
        except (OSError, ValueError) as exc:  # json.JSONDecodeError and UnicodeError too
            event(
                log,
                "UDP peer baseline ignored",
                logging.WARNING,
                path=str(self.path),
                error=str(exc)[:200],
            )
            return {}
        event(log, "UDP peer baseline loaded", path=str(self.path), workloads=len(baseline))
        return baseline

    def maybe_save(self, monitor: Any, now: float | None = None) -> None:
        """Snapshot and write in the background when peers were learned and it is time."""
        now = time.monotonic() if now is None else now
        if monitor.baseline_changes == self.saved_changes or now < self.next_save:
            return
        if self._writer is not None and self._writer.is_alive():
            return  # the last write is still going: try again next tick
        self.next_save = now + self.interval
        self.saved_changes = monitor.baseline_changes
        data = encode(monitor.baseline())
        self._writer = threading.Thread(target=self._write, args=(data,), name="peer-file")
        self._writer.start()

    def save(self, monitor: Any) -> None:
        """Write now if anything was learned since the last write (at stop)."""
        if self._writer is not None:
            self._writer.join()
        if monitor.baseline_changes != self.saved_changes:
            self.saved_changes = monitor.baseline_changes
            self._write(encode(monitor.baseline()))

    def _write(self, data: bytes) -> None:
        if len(data) > self.max_bytes:
            self.failures += 1
            event(
                log,
                "UDP peer baseline not saved: too large",
                logging.WARNING,
                path=str(self.path),
                size=len(data),
                max_bytes=self.max_bytes,
            )
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self.path, data, durable=True)
            self.writes += 1
        except OSError as exc:
            self.failures += 1
            event(
                log,
                "UDP peer baseline not saved",
                logging.WARNING,
                path=str(self.path),
                error=str(exc)[:200],
            )
