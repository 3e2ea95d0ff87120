"""`meshward serve`: one asyncio process, one engine, three listeners.

ext_authz gRPC (Authorization/Check), the tap gRPC (ext_proc observability streams) and HTTP (JSON
API, /metrics, /healthz, /readyz) all run on one event loop, so the engine (not thread-safe) is
only ever called from that loop's thread. gRPC health checking is served on both gRPC ports;
reflection only when asked for (`--grpc-reflection`): it tells anyone who can connect what the
ports serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from meshward.app import grpctls
from meshward.app.audit import AuditLog, state_dir
from meshward.app.auth import AuthConfig, guard_for
from meshward.app.cpusplit import AUTO, CpuSplit
from meshward.app.flusher import Flusher
from meshward.app.ingest import DEFAULT_SHARE, Ingestor
from meshward.app.nodescope import cluster_pods
from meshward.app.pipeline import Pipeline
from meshward.app.store import AlertStore, Store, WithAlerts, open_store
from meshward.core.edges import add_pending
from meshward.core.engine import Engine, EngineConfig
from meshward.core.log import event
from meshward.core.threats.inspection import Detector
from meshward.extauthz import service as authz_service
from meshward.extauthz.service import CheckService
from meshward.istio.certs import CertError
from meshward.runtime.grpcpeer import PeerPolicy, PeerVerifier
from meshward.runtime.metrics import Metrics, Problems
from meshward.tap.envoy import extproc
from meshward.tap.envoy.assemble import TapLimits
from meshward.tap.envoy.extproc import TapService
from meshward.tap.envoy.join import Joiner

if TYPE_CHECKING:  # the Kubernetes client is imported only with --store kubernetes
    from meshward.app.kubestore import KubeStore

log = logging.getLogger("meshward.app.serve")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", authz_service.GRPC_MAX_MESSAGE),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    # Envoy multiplexes every check and tap stream of a sidecar on one HTTP/2 connection; under
    # a burst gRPC's overload protection would refuse streams the loop has not picked up yet,
    # losing tap copies. Envoy's circuit breaker (istio/filters.py) bounds them instead.
    ("grpc.http.overload_protection", 0),
    ("grpc.max_concurrent_streams", 100_000),
]
# Calls gRPC's core has received but the loop has not accepted yet: past 1,000 it starts
# cancelling them at random (all past 3,000). Every tap stream is one call and many sidecars
# feed one meshward, so a lagging loop lost copies there; each sidecar bounds its own streams
# (istio/filters.py tap_stream_window), the sum of them bounds these.
TAP_GRPC_OPTIONS = [
    *GRPC_OPTIONS,
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
]


@dataclass
class ServeConfig:
    db: str = "./meshward.db"
    listen_host: str = "0.0.0.0"
    authz_port: int = 9191
    tap_port: int = 9192
    http_port: int = 9193
    tap_limits: TapLimits = field(default_factory=TapLimits)
    tap_stream_timeout: float = 30.0
    tap_max_buffered: int = 256 * 1024 * 1024  # bytes all open tap streams hold together
    join_window: float = 10.0
    flush_interval: float = 2.0  # seconds between batched store writes
    max_ingest_bytes: int = 16 * 1024 * 1024
    ingest_share: float = DEFAULT_SHARE  # of one CPU, for the ingest worker while Checks flow
    ingest_cpu: str = AUTO  # the ingest worker's own CPU (meshward.app.cpusplit): auto, off, N
    engine: EngineConfig = field(default_factory=EngineConfig)
    store: str = "sqlite"  # or "kubernetes": the cluster store (app/replica.py)
    kubeconfig: str | None = None  # kubernetes: None is the pod's service account
    replica: str = ""  # kubernetes: this replica's id ("" = POD_NAME, else the host name)
    cluster_namespace: str = "meshward"  # kubernetes: where objects of non-service names go
    # alerts and edge counts in PostgreSQL (every replica's); may hold a password: not in repr
    alerts_dsn: str | None = field(default=None, repr=False)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # in a cluster the mode is the Namespace label meshward.io/mode: PUT /api/v1/modes refused
    modes_from_labels: bool = False
    # who may call the gRPC ports (mTLS with the CA in grpc_ca_dir by default; app/grpctls.py)
    peers: PeerPolicy = field(default_factory=PeerPolicy)
    grpc_ca_dir: str = ""  # default: meshward-ca beside the store
    grpc_reflection: bool = False  # off by default: a debugging aid, not for production

    def __post_init__(self) -> None:
        if self.store == "kubernetes":  # the cluster store reads modes from the labels only
            self.modes_from_labels = True


class Server:
    """The running `meshward serve`: start(), the bound ports, stop().

    Without `engine` it opens the store at `config.db` and builds the engine on it (with
    `detector`, else the default ones); a given `engine` runs without a store (tests, benches).
    """

    def __init__(
        self, config: ServeConfig, engine: Engine | None = None, detector: Detector | None = None
    ) -> None:
        self.config = config
        self.guard = guard_for(config.auth, state_dir(config.db), os.environ)
        self.audit = AuditLog.beside(config.db)
        self.pods, self.node_scope = cluster_pods(config.auth)
        self.metrics = Metrics()
        self.problems = Problems(self.metrics, log)
        self.guard.report = self.problems  # refused callers: counted, logged boundedly
        self.flusher: Flusher | None = None
        self.cluster: KubeStore | None = None  # the cluster store, synced after start()
        rebuildable = engine is None and detector is None  # the default detector, from config
        if engine is None:
            from meshward.app import sigcache

            engine = Engine(config.engine, detector or sigcache.detector(config.engine))
            if config.store == "kubernetes":
                self.flusher = self._cluster_flusher(engine)
            else:
                store: Store = open_store(config.db, alert_quota=config.engine.alert_quota)
                if config.alerts_dsn:
                    from meshward.app.pgstore import PostgresAlerts

                    try:
                        store = WithAlerts(
                            store,
                            PostgresAlerts(
                                config.alerts_dsn, alert_quota=config.engine.alert_quota
                            ),
                        )
                    except BaseException:
                        store.close()
                        raise
                self.flusher = Flusher(engine, store, config.flush_interval)
                try:
                    self.flusher.load()
                except BaseException:
                    self.flusher.store.close()
                    raise
        # the ingest worker rebuilds serve's detector from the config; a given engine (tests,
        # benches) may have one it cannot rebuild: then its detectors run here
        # the latest Check's time, in memory the ingest worker reads (it rests while Checks flow)
        last_check = multiprocessing.get_context("spawn").RawValue("d", 0.0)
        self.ingestor = Ingestor(
            config.engine if rebuildable else None,
            last_check=last_check,
            share=config.ingest_share,
            cpus=CpuSplit(config.ingest_cpu),
        )
        self.engine = engine
        self.metrics.follow(self.metrics.refused, lambda: engine.refused)
        if self.flusher is not None:
            evicted = self.flusher.store.evicted
            self.metrics.follow(self.metrics.alerts_evicted, lambda: evicted)
        self.joiner = Joiner(window=config.join_window)
        self.pipeline = Pipeline(self.engine, self.metrics, self.joiner, self.pods)
        # in a cluster a hinted workload must run under the verified service account (pod index)
        binding = self.pods.runs_under if self.pods is not None else None
        self.peers = PeerVerifier(config.peers, self.problems, binding)
        self.check = CheckService(
            self.pipeline.judge_check, self.metrics, self.problems, self.peers, last_check
        )
        self.tap = TapService(
            self.pipeline.take_tap,
            self.metrics,
            self.problems,
            limits=config.tap_limits,
            stream_timeout=config.tap_stream_timeout,
            max_buffered=config.tap_max_buffered,
            peers=self.peers,
        )
        self.ports: dict[str, int] = {}
        self.ready = False
        self._grpc: list[grpc.aio.Server] = []
        self._health: list[HealthServicer] = []
        self._runner: web.AppRunner | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._stop_flushing = asyncio.Event()
        self._coming_up: asyncio.Task[None] | None = None
        self.tls: grpctls.ServingCerts | None = None  # mtls: renewed, revocations re-read
        self._tls_watch: asyncio.Task[None] | None = None

    def _cluster_flusher(self, engine: Engine) -> Flusher:
        """The engine's flusher on the cluster store; alerts in PostgreSQL (--alerts-dsn), else
        in this replica's SQLite file."""
        from meshward.app import replica

        name = replica.replica_id(self.config.replica)
        if self.config.alerts_dsn:
            from meshward.app.pgstore import PostgresAlerts

            alerts: AlertStore = PostgresAlerts(
                self.config.alerts_dsn, replica=name, alert_quota=self.config.engine.alert_quota
            )
        else:
            alerts = open_store(self.config.db, alert_quota=self.config.engine.alert_quota)
        try:
            store = replica.open_cluster_store(
                kubeconfig=self.config.kubeconfig,
                replica=name,
                namespace=self.config.cluster_namespace,
                alerts=alerts,
                limits=engine.config.limits,
            )
        except BaseException:
            alerts.close()
            raise
        self.cluster = store
        return Flusher(
            engine,
            store,
            self.config.flush_interval,
            sharing=replica.sharing(store, engine, self.mode_changed),
            changed=self.mode_changed,
        )

    async def start(self) -> None:
        """Listen on all three ports, or on none: a failure stops what had started."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        from meshward.app.api import build_app  # the API module imports nothing from here

        host = self.config.listen_host
        if self.cluster is None:
            await self._grpc_servers()
        app = build_app(self)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, self.config.http_port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.ports["http"] = sockets[0].getsockname()[1] if sockets else self.config.http_port
        if self.pods is not None:
            self.pods.start()
        if self.cluster is not None:  # not ready, gRPC closed, until the first sync
            self._coming_up = asyncio.create_task(self._sync_then_serve())
            return
        self._serving()

    def _serving(self) -> None:
        if self.flusher is not None:
            self._flushing = asyncio.create_task(
                self.flusher.run(self._stop_flushing, self._flush_failed)
            )
        # what start built (detectors, loaded allowlists, protobuf and gRPC modules) lives as
        # long as serve: out of the collector's full scans, which otherwise walk all of it each
        # time an ingest's garbage triggers one (7-42 ms held on the loop, the Checks' tail).
        # Here rather than in serve_forever only, so every runner of Server (benches) has it
        gc.collect()
        gc.freeze()
        self.ready = True
        event(
            log, "serving", host=self.config.listen_host, grpc=self.config.peers.kind, **self.ports
        )

    async def _grpc_servers(self) -> None:
        host = self.config.listen_host
        creds = self._credentials()
        self.ports["authz"] = await self._grpc_server(
            self.check.methods(), authz_service.SERVICE, host, self.config.authz_port, creds
        )
        self.ports["tap"] = await self._grpc_server(
            self.tap.methods(), extproc.SERVICE, host, self.config.tap_port, creds, TAP_GRPC_OPTIONS
        )

    async def _sync_then_serve(self) -> None:
        """The cluster store's first sync (retried while the API server is away), then the
        gRPC ports and readiness. A port that cannot be opened leaves serve not ready (and
        says so)."""
        from meshward.app import replica

        assert self.flusher is not None and self.cluster is not None
        if not await replica.first_sync(self.flusher, self.cluster, self._stop_flushing):
            return
        self.mode_changed()
        try:
            await self._grpc_servers()
        except (OSError, ValueError, CertError) as exc:  # a port, the CA, the revocation list
            self.problems("serve", "listen-failed", error=str(exc)[:200])
            return
        self._serving()

    def _credentials(self) -> grpctls.ServingCerts | None:
        """mTLS material renewed while serve runs (the `mtls` policy), with the revocation list
        the verifier checks; else None: plaintext, announced loudly."""
        policy = self.config.peers
        grpctls.announce(policy)
        if policy.kind != "mtls":
            return None
        directory = grpctls.ca_dir(self.config.db, self.config.grpc_ca_dir)
        self.tls = grpctls.ServingCerts(policy, directory, self.problems)
        self.peers.revocations = self.tls.revocations
        self._tls_watch = asyncio.create_task(self.tls.watch())
        return self.tls

    async def _grpc_server(
        self,
        methods: dict[str, grpc.RpcMethodHandler],
        service: str,
        host: str,
        port: int,
        creds: grpctls.ServingCerts | None,
        options: list[tuple[str, int]] = GRPC_OPTIONS,
    ) -> int:
        if creds is not None:  # connections recycled: rotations reach them (app/grpctls.py)
            options = [*options, *creds.server_options()]
        server = grpc.aio.server(options=options)
        # registered methods are matched in gRPC's core, before any Python runs (the fast path
        # generated stubs use); the generic handler serves the same methods to anything else
        server.add_registered_method_handlers(service, methods)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        if self.config.grpc_reflection:
            reflection.enable_server_reflection(
                (
                    service,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
        address = f"{_grpc_host(host)}:{port}"
        try:
            if creds is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, creds.credentials())
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port} (in use or not a local address)")
        await server.start()
        for name in ("", service):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._grpc.append(server)
        self._health.append(health)
        return bound

    def _flush_failed(self, exc: Exception) -> None:
        self.problems("engine", "flush-failed", error=repr(exc)[:200])

    async def stop(self, grace: float = 1.0) -> None:
        self.ready = False
        if self._coming_up is not None and not self._coming_up.done():
            self._stop_flushing.set()
            self._coming_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._coming_up
        for health in self._health:
            await health.enter_graceful_shutdown()
        await asyncio.gather(*(s.stop(grace) for s in self._grpc))
        if self._tls_watch is not None:
            self._tls_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tls_watch
        if self._runner is not None:
            await self._runner.cleanup()
        self.ingestor.close()
        if self.pods is not None:
            await asyncio.to_thread(self.pods.stop)
        await self._close_store()
        event(log, "stopped")

    async def _close_store(self) -> None:
        """The last batch (written by the flush task as it ends), then the store is closed."""
        if self.flusher is None:
            return
        try:
            if self._flushing is not None:
                self._stop_flushing.set()
                await self._flushing
            elif self.cluster is None:  # start() failed before the task: what was learned
                await self.flusher.flush_off_loop()  # meanwhile is still written
        except Exception as exc:
            self.problems("engine", "close-failed", error=repr(exc)[:200])
        try:
            await self.flusher.close_off_loop()
        except Exception as exc:
            self.problems("engine", "close-failed", error=repr(exc)[:200])
        self.flusher = None

    async def alerts(self, limit: int = 100, namespace: str | None = None) -> list[dict[str, Any]]:
        """The newest alerts first: the store's history (read off the loop) and what is pending."""
        if self.flusher is None:
            return self.engine.alerts(limit=limit, namespace=namespace)
        return await self.flusher.alerts_off_loop(limit, namespace)

    async def edges(
        self, since: float, until: float | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Per-edge verdict counts per time bucket, oldest first (the store's and pending)."""
        if self.flusher is None:
            return add_pending([], self.engine.edges.peek(), since, until, namespace)
        return await self.flusher.edges_off_loop(since, until, namespace)

    async def set_mode(self, namespace: str, mode: str) -> None:
        """A namespace's mode, stored (off the loop) and in effect when this returns."""
        if self.flusher is None:
            self.engine.set_mode(namespace, mode)
        else:
            await self.flusher.set_mode_off_loop(namespace, mode)

    def mode_changed(self) -> None:
        """A namespace mode changed: cached decisions of the old mode must not linger."""
        self.pipeline.cache.clear()

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "ports": dict(self.ports),
            "tap_streams_active": self.tap.active,
            "join_pending": self.joiner.pending(),
        }


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve_forever(config: ServeConfig) -> None:
    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()  # freezes its startup heap (Server._start)
    try:
        await stop.wait()
    finally:
        await server.stop()


def run(config: ServeConfig) -> None:
    uv = install_uvloop()
    event(log, "starting", uvloop=uv, db=config.db)
    asyncio.run(serve_forever(config))
