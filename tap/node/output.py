"""Where the node tap's observations go: JSON Lines on stdout, or batches to `meshward serve`.

The capture thread must never wait on output, so it only appends to a bounded deque (a full one
drops the observation and counts it); one writer thread drains it. A deque, not queue.Queue:
its append takes no lock, where Queue.put's lock, when the writer held it across a GIL switch,
cost the packet loop 160 us per observation (profiled at 2,000 requests/s over 20 pods). The HTTP
writer sends JSON arrays to POST {server}/api/v1/observations and, while the server is down or
slow, keeps retrying the same batch with backoff: that is the back-pressure, and the queue
bound is what keeps memory flat meanwhile.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from typing import TextIO

from meshward.core.log import event
from meshward.core.observation import Observation, observation_to_dict
from meshward.runtime.client import ApiClient, ApiError
from meshward.tap.node.counters import NodeTapCounters

log = logging.getLogger("meshward.node-tap.output")


class Output:
    """Bounded deque + writer thread; subclasses implement `_write(batch)`."""

    POLL = 0.01  # seconds the writer sleeps when there is nothing to write

    def __init__(self, metrics: NodeTapCounters, max_queue: int = 10000, batch: int = 500) -> None:
        self.metrics = metrics
        self.queue: deque[Observation] = deque()
        self.max_queue = max_queue
        self.batch = batch
        self.closing = threading.Event()  # set: write what is queued, then stop
        self.stopping = threading.Event()  # set: give up retrying, drop instead
        self._thread = threading.Thread(target=self._run, name="node-tap-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, obs: Observation) -> None:
        if len(self.queue) >= self.max_queue:
            self.metrics.out_dropped += 1
            return
        self.queue.append(obs)
        self.metrics.out_queued += 1

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued (up to `timeout`), then stop the writer."""
        if not self._thread.is_alive():
            return
        self.closing.set()
        self._thread.join(timeout / 2)
        if self._thread.is_alive():
            self.stopping.set()
            self._thread.join(5.0)
            self.metrics.out_dropped += len(self.queue)

    def _run(self) -> None:
        queue = self.queue
        while True:
            if not queue:
                if self.closing.is_set():
                    return
                time.sleep(self.POLL)
                continue
            batch: list[Observation] = []
            linger_until = time.monotonic() + self._linger()
            while len(batch) < self.batch:
                if queue:
                    batch.append(queue.popleft())
                elif self.closing.is_set() or time.monotonic() >= linger_until:
                    break
                else:
                    time.sleep(self.POLL)
            self._write(batch)

    def _linger(self) -> float:
        return 0.0

    def _write(self, batch: list[Observation]) -> None:
        raise NotImplementedError


class JsonlOutput(Output):
    """One JSON object per line (observation_to_dict) on stdout."""

    def __init__(self, metrics: NodeTapCounters, stream: TextIO | None = None, **kw: int) -> None:
        super().__init__(metrics, **kw)
        self.stream = stream or sys.stdout

    def _write(self, batch: list[Observation]) -> None:
        lines = "".join(json.dumps(observation_to_dict(o)) + "\n" for o in batch)
        try:
            self.stream.write(lines)
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            self.metrics.out_dropped += len(batch)
            return
        self.metrics.out_sent += len(batch)


class HttpOutput(Output):
    """Batched POSTs to `meshward serve`'s ingest endpoint, retried with backoff."""

    def __init__(
        self,
        metrics: NodeTapCounters,
        server: str,
        token: str | None = None,
        token_file: str | None = None,
        **kw: int,
    ) -> None:
        super().__init__(metrics, **kw)
        self.client = ApiClient(server, token=token, timeout=10, token_file=token_file)

    def _linger(self) -> float:
        return 0.2  # gather up to 200 ms of observations per POST

    def _write(self, batch: list[Observation]) -> None:
        body = json.dumps([observation_to_dict(o) for o in batch]).encode()
        delay = 0.2
        while True:
            try:
                self.client.post_observations(body)
                self.metrics.out_sent += len(batch)
                return
            except ApiError as exc:
                if not exc.retryable:
                    event(
                        log,
                        "server rejected batch",
                        logging.WARNING,
                        status=exc.status,
                        error=exc.reason,
                        dropped=len(batch),
                    )
                    self.metrics.out_dropped += len(batch)
                    return
                reason = str(exc)
            if self.stopping.is_set():
                self.metrics.out_dropped += len(batch)
                return
            event(
                log,
                "server unavailable, retrying",
                logging.WARNING,
                url=self.client.base_url,
                error=reason[:200],
                retry_in=delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
