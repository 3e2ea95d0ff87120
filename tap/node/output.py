"""Where the node tap's observations go: JSON Lines on stdout, or batches to `meshward serve`.

The capture thread must never wait on output, so it only does a non-blocking put into a bounded
queue (a full queue drops the observation and counts it); one writer thread drains it. The HTTP
writer sends JSON arrays to POST {server}/api/v1/observations and, while the server is down or
slow, keeps retrying the same batch with backoff: that is the back-pressure, and the queue
bound is what keeps memory flat meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
from typing import TextIO

from meshward.core.log import event
from meshward.core.observation import Observation, observation_to_dict
from meshward.runtime.client import ApiClient, ApiError
from meshward.tap.node.counters import NodeTapCounters

log = logging.getLogger("meshward.node-tap.output")
_STOP = object()


class Output:
    """Bounded queue + writer thread; subclasses implement `_write(batch)`."""

    def __init__(self, metrics: NodeTapCounters, max_queue: int = 10000, batch: int = 500) -> None:
        self.metrics = metrics
        self.queue: queue.Queue[object] = queue.Queue(max_queue)
        self.batch = batch
        self.stopping = threading.Event()  # set: give up retrying, drop instead
        self._thread = threading.Thread(target=self._run, name="node-tap-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, obs: Observation) -> None:
        try:
            self.queue.put_nowait(obs)
            self.metrics.out_queued += 1
        except queue.Full:
            self.metrics.out_dropped += 1

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued (up to `timeout`), then stop the writer."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=timeout / 2)
        self._thread.join(timeout / 2)
        if self._thread.is_alive():
            self.stopping.set()
            self._thread.join(5.0)
            self.metrics.out_dropped += self.queue.qsize()

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self.queue.get()
            batch: list[Observation] = []
            while True:
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= self.batch:
                    break
                try:
                    item = self.queue.get(timeout=self._linger())
                except queue.Empty:
                    break
            if batch:
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
