"""The `envoy.service.auth.v3.Authorization/Check` handler on grpc.aio.

The handler runs on the event loop thread that owns the engine. It registers its own
(de)serialisers so that a message upb cannot parse (bad UTF-8, truncated bytes) becomes a counted,
logged INVALID_ARGUMENT instead of an unhandled exception; Envoy then applies the filter's
`failure_mode_allow` (closed in enforce, open in learn and monitor).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2

from meshward.core import wire
from meshward.core.observation import Observation, Verdict
from meshward.core.peer import Refused
from meshward.extauthz.convert import OK_BYTES, check_to_observation, denied_response
from meshward.runtime.grpcpeer import UNVERIFIED, PeerVerifier
from meshward.runtime.grpcwire import Undecodable, serialized, tolerant_deserializer
from meshward.runtime.metrics import Metrics, Problems

SERVICE = "envoy.service.auth.v3.Authorization"
MAX_MESSAGE = 4 * 1024 * 1024  # bytes of one Check; larger ones are counted and refused here
GRPC_MAX_MESSAGE = 16 * 1024 * 1024  # gRPC's own hard limit, above ours so we see and count


_deserialize = tolerant_deserializer(external_auth_pb2.CheckRequest, "check", MAX_MESSAGE)


Judge = Callable[[Observation], Verdict]


class CheckService:
    """Check: CheckRequest -> Observation -> `judge` (the engine, mode-aware) -> CheckResponse."""

    def __init__(
        self,
        judge: Judge,
        metrics: Metrics,
        problems: Problems,
        peers: PeerVerifier | None = None,
        last_check: Any = None,
    ) -> None:
        self.judge = judge
        # who calls: the verified sidecar (serve passes its policy); None only in-process
        self.peers = peers or PeerVerifier(UNVERIFIED, problems)
        self.metrics = metrics
        self.problems = problems
        self._ok = metrics.checks.labels("ok")
        self._denied = metrics.checks.labels("denied")
        self._latency = metrics.check_latency
        # .value: time.monotonic() of the latest Check, in memory the ingest worker shares (it
        # rests while Checks flow)
        self.last_check = last_check if last_check is not None else ctypes.c_double(0.0)

    async def check(
        self,
        req: external_auth_pb2.CheckRequest | Undecodable,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        start = time.perf_counter()
        self.last_check.value = time.monotonic()
        if isinstance(req, Undecodable):
            self.metrics.checks.labels("error").inc()
            self.problems("extauthz", req.kind, error=req.error, size=req.size)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{req.kind}: {req.error}")
        try:
            obs = self._observation(req, context)
            verdict = self.judge(obs)
        except Refused as exc:  # no verified identity, or one claiming more: teaches nothing
            self.metrics.checks.labels("refused").inc()
            self.peers.refused("extauthz", exc, context)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"meshward: {exc.reason}")
        except Exception as exc:  # keep serving whatever one request does
            self.metrics.checks.labels("error").inc()
            self.problems("extauthz", "check-failed", error=repr(exc)[:200])
            await context.abort(grpc.StatusCode.INTERNAL, "meshward check failed")
        if verdict.verdict == "deny":
            answer = denied_response(obs.request_id).SerializeToString()  # reasons: the alert
            self._denied.inc()
        else:
            answer = OK_BYTES
            self._ok.inc()
        self._latency.observe(time.perf_counter() - start)
        return answer

    def _observation(
        self, req: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> Observation:
        """The Observation, its destination bound to the verified calling sidecar (Refused)."""
        hints = lambda: self._fallback_identity(context)  # noqa: E731
        peers = self.peers
        if not peers.verifies:
            return check_to_observation(req, hints)
        metadata = context.invocation_metadata() if peers.policy.kind == "xfcc" else None
        peer = peers.sidecar(context, metadata)
        return check_to_observation(
            req, hints, lambda ns, wl: peers.guarded(peer, ns, wl), peer.uri
        )

    @staticmethod
    def _fallback_identity(context: grpc.aio.ServicerContext) -> tuple[str, str]:
        """Namespace/workload hints from the gRPC metadata the filter config also sets."""
        md = dict(context.invocation_metadata() or ())
        return str(md.get(wire.METADATA_NAMESPACE, "")), str(md.get(wire.METADATA_WORKLOAD, ""))

    def methods(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.check, request_deserializer=_deserialize, response_serializer=serialized
            )
        }
