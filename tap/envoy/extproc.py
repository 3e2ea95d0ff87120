"""The `envoy.service.ext_proc.v3.ExternalProcessor/Process` server for observability mode.

Observability mode is send-and-go: Envoy ignores our answers, so we send none. Each stream is
read until the exchange is complete and then ended at once (ending it late makes Envoy hold it
for `deferred_close_timeout`, see docs/envoy.md). Streams that never complete expire; a stream cut
mid-way loses only itself. Whatever was seen of the request is still handed to `sink`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2

from meshward.core import wire
from meshward.core.observation import Direction, Observation, Outcome
from meshward.core.peer import Refused
from meshward.runtime.grpcpeer import UNVERIFIED, PeerVerifier
from meshward.runtime.grpcwire import Undecodable, serialize, tolerant_deserializer
from meshward.runtime.metrics import Metrics, Problems
from meshward.tap.envoy.assemble import ByteBudget, ExtProcAssembler, StreamContext, TapLimits

SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"

Sink = Callable[[Observation], None]


MAX_MESSAGE = 4 * 1024 * 1024  # bytes of one ProcessingRequest (a body chunk is far smaller)


_deserialize = tolerant_deserializer(
    external_processor_pb2.ProcessingRequest, "message", MAX_MESSAGE
)


def stream_context(
    metadata: tuple[tuple[str, str | bytes], ...] | None,
    peers: PeerVerifier | None = None,
    context: grpc.aio.ServicerContext | None = None,
) -> StreamContext:
    """Who sent the stream. With a verifying `peers`, the sidecar's namespace and workload are
    its verified identity's (the metadata hints only narrow it, core.peer.guarded; Refused
    otherwise); without one (in-process use) the hints are taken as they are."""
    md = {k: v if isinstance(v, str) else v.decode("utf-8", "replace") for k, v in metadata or ()}
    outbound = md.get(wire.METADATA_DIRECTION) == "outbound"
    direction: Direction = "outbound" if outbound else "inbound"
    namespace = md.get(wire.METADATA_NAMESPACE, "")
    workload = md.get(wire.METADATA_WORKLOAD, "")
    principal = ""
    if peers is not None and peers.verifies:
        assert context is not None
        peer = peers.sidecar(context, metadata)
        namespace, workload = peers.guarded(peer, namespace, workload)
        principal = peer.uri
    return StreamContext(
        namespace=namespace,
        workload=workload,
        direction=direction,
        node=md.get(wire.METADATA_NODE, ""),
        response_body=md.get(wire.METADATA_TAP_RESPONSE_BODY, "").lower() in ("1", "true"),
        principal=principal,
    )


class TapService:
    """Process: one ext_proc stream -> one Observation handed to `sink`."""

    def __init__(
        self,
        sink: Sink,
        metrics: Metrics,
        problems: Problems,
        limits: TapLimits | None = None,
        stream_timeout: float = 30.0,
        max_streams: int = 20000,
        max_buffered: int = 256 * 1024 * 1024,
        peers: PeerVerifier | None = None,
    ) -> None:
        self.sink = sink
        # who calls: the verified sidecar (serve passes its policy); None only in-process
        self.peers = peers or PeerVerifier(UNVERIFIED, problems)
        self.metrics = metrics
        self.problems = problems
        self.limits = limits or TapLimits()
        self.stream_timeout = stream_timeout
        self.max_streams = max_streams
        self.active = 0
        self.budget = ByteBudget(max_buffered)  # what all open streams hold together

    async def process(
        self,
        requests: object,  # unused: the handler reads through the context
        context: grpc.aio.ServicerContext,
    ) -> None:
        if self.active >= self.max_streams:
            self.metrics.drops.labels("tap", "too-many-streams").inc()
            return
        try:
            ctx = stream_context(context.invocation_metadata(), self.peers, context)
        except Refused as exc:  # no verified identity, or one claiming more: teaches nothing
            self.peers.refused("tap", exc, context)
            self.metrics.tap_streams.labels("refused").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"meshward: {exc.reason}")
        except Exception as exc:  # bad metadata in one stream never stops the server
            self.problems("tap", "context-failed", error=repr(exc)[:200])
            await context.abort(grpc.StatusCode.INTERNAL, "meshward tap failed")
        self.active += 1
        self.metrics.tap_active.inc()
        start = time.perf_counter()
        asm = ExtProcAssembler(ctx, self.limits, self.budget)
        outcome: Outcome = "complete"
        try:
            async with asyncio.timeout(self.stream_timeout):
                outcome = await self._read(asm, context)
        except TimeoutError:
            outcome = "expired"
        except (grpc.aio.AioRpcError, asyncio.CancelledError, ConnectionError):
            # Envoy reset the stream (client gone, Envoy stopping): this stream alone is lost,
            # and whatever it carried of the request is still judged below
            outcome = "cut"
        finally:
            self.active -= 1
            self.metrics.tap_active.dec()
            self.metrics.tap_streams.labels(outcome).inc()
            self.metrics.tap_stream_latency.observe(time.perf_counter() - start)
        try:
            self._hand_over(asm, outcome)
        finally:
            asm.release()

    async def _read(self, asm: ExtProcAssembler, context: grpc.aio.ServicerContext) -> Outcome:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return "complete" if asm.complete else "cut"
            if isinstance(msg, Undecodable):
                self.problems("tap", msg.kind, error=msg.error)
                return "error"
            if asm.feed(msg):
                return "complete"

    def _hand_over(self, asm: ExtProcAssembler, outcome: Outcome) -> None:
        try:
            obs = asm.observation()
        except Exception as exc:  # bad values in one stream never stop the server
            self.problems("tap", "assemble-failed", error=repr(exc)[:200])
            return
        if obs is None:
            self.metrics.drops.labels("tap", f"no-request-headers-{outcome}").inc()
            return
        if outcome != "complete":
            obs.outcome = outcome
        if obs.body_truncated:
            self.metrics.truncations.labels("envoy-tap").inc()
        if asm.budget_cut:
            self.metrics.drops.labels("tap", "buffer-budget-cut").inc()
        try:
            self.sink(obs)
        except Exception as exc:
            self.problems("tap", "sink-failed", error=repr(exc)[:200])

    def methods(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "Process": grpc.stream_stream_rpc_method_handler(
                self.process, request_deserializer=_deserialize, response_serializer=serialize
            )
        }
