"""Where every observation meets the engine: small steps, composed in one list.

An observation enters as a `Call` through one of three doors: `check` (ext_authz, inline: the
verdict decides the request), `tap` (an Envoy tap copy, after the fact) or `ingest` (the node
tap and files). Each step is an object with a method per door it cares about (in the spirit of
mitmproxy's addons); the pipeline calls them in list order until one stops the call, then
`done` on every step. The steps, in order:

- `CallerByIp` (in a cluster, with serve's pod index): a node tap's plaintext caller, known
  only by its IP, named after the pod holding that IP (meshward.app.callerip);
- `Count`: observations and truncations per source;
- `ControlPlaneConnections`: a node tap's report of a control-plane connection that raised
  nothing is counted on its edge and stops (an L4 fact, nothing to learn; meshward.app.cpedges);
- `BothEnds`: a tap copy feeds the both-ends join; a mismatch is judged again with the join's
  `Exchange.Mismatch` threat; the caller's outbound view stops here (it only feeds the join);
- `JudgedByCheck`: a request ext_authz judged whole is remembered, and its tap copy skipped
  (a body cut at the filter's `with_request_body` limit is not: its longer tap copy is judged,
  so padding past the limit cannot hide a payload); keyed on the verified identities, so only
  the same sidecar's Check marks its copy judged;
- `CachedDecision`: for body-less Checks in monitor and enforce, a recent clean allow, still
  re-inspected through the engine (meshward.app.decisioncache);
- `Judge`: the engine's verdict (a tap copy cut or expired before its response is judged but
  not learned), counted, and noted for the join;
- `RecentCalls`: a bounded, redacted sample of the judged calls per namespace, replayed by the
  enforce-readiness report (meshward.app.recent).

An ingested batch runs through these same steps in the ingest worker process, on an engine
loaded with a snapshot of serve's state; serve adds what they counted and learned
(meshward.app.batchjudge, meshward.app.batchapply).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from meshward.app.callerip import CallerByIp, PodsByIp
from meshward.app.cpedges import ControlPlaneConnections
from meshward.app.decisioncache import DecisionCache, Key
from meshward.app.recent import RecentCalls
from meshward.core import redact
from meshward.core.claims import distrusted
from meshward.core.engine import Engine, Prepared
from meshward.core.observation import Observation, Verdict
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.join import Joiner

SOURCES = ("extauthz", "envoy-tap", "node-tap", "file")


@dataclass
class Call:
    """One observation on its way through the steps."""

    obs: Observation
    source: str  # extauthz | envoy-tap | node-tap | file
    learn: bool = True
    verdict: Verdict | None = None
    stop: bool = False  # a step decided nothing further is to be done
    cache_key: Key | None = None
    cached: bool = False
    prepared: Prepared | None = None  # decoded and inspected elsewhere (the ingest worker)


class Count:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._observed = {s: metrics.observations.labels(s) for s in SOURCES}

    def check(self, call: Call) -> None:
        self._observed["extauthz"].inc()
        if call.obs.body_truncated:
            self.metrics.truncations.labels("extauthz").inc()

    def tap(self, call: Call) -> None:
        self._observed["envoy-tap"].inc()

    def ingest(self, call: Call) -> None:
        self._observed[call.source].inc()


class Judge:
    def __init__(self, engine: Engine, metrics: Metrics, joiner: Joiner) -> None:
        self.engine = engine
        self.metrics = metrics
        self.joiner = joiner
        self._latency = {s: metrics.evaluate_latency.labels(s) for s in SOURCES}

    def judge(
        self,
        obs: Observation,
        source: str,
        learn: bool = True,
        prepared: Prepared | None = None,
    ) -> Verdict:
        start = time.perf_counter()
        verdict = self.engine.evaluate(obs, learn=learn, prepared=prepared)
        self._latency[source].observe(time.perf_counter() - start)
        self.account(obs, source, verdict)
        return verdict

    def account(self, obs: Observation, source: str, verdict: Verdict) -> None:
        self.metrics.count_verdict(source, verdict)
        self.engine.edges.add(verdict.source, verdict.destination, verdict.verdict, obs.time)
        if verdict.verdict != "allow" and obs.request_id:
            shown = {"seen_by": source, **verdict.as_dict()}
            shown["threats"] = redact.shown_threats(verdict.threats)  # served with the exchange
            self.joiner.note_verdict(obs, shown)

    def _decide(self, call: Call) -> None:
        if call.verdict is None:
            call.verdict = self.judge(call.obs, call.source, call.learn, call.prepared)
        else:  # decided by an earlier step (a cache hit): counted the same way
            self.account(call.obs, call.source, call.verdict)

    check = tap = ingest = _decide


CallKey = tuple[str, str, str, str, str, str]


def call_key(obs: Observation) -> CallKey:
    """One hop of one request, as the guarded sidecar saw it: apps pass x-request-id on to their
    own calls, so the id alone names every hop of a request; with authority, method and path it
    names this one. The guarded destination and the caller are part of it: on serve's verified
    ports they are the identities the sidecar's certificate (or meshward's own sidecar) proved,
    so a Check from any other sidecar, even carrying the same x-request-id, cannot mark a tap
    copy of this sidecar as judged (issue 11: a forged clean Check hid a real attack)."""
    dest, source = obs.destination, obs.source
    return (
        obs.request_id,
        obs.authority.lower(),
        obs.method,
        obs.path,
        f"{dest.principal}|{dest.key}",
        source.principal or source.key,
    )


class JudgedByCheck:
    """Calls ext_authz judged lately (bounded, time-limited), so their tap copies are skipped."""

    def __init__(self, metrics: Metrics, ttl: float = 30.0, size: int = 100_000) -> None:
        self.metrics = metrics
        self.ttl = ttl
        self.size = size
        self._calls: dict[CallKey, float] = {}

    def check(self, call: Call) -> None:
        obs = call.obs
        if obs.request_id and not obs.body_truncated:
            calls = self._calls
            calls[call_key(obs)] = time.monotonic()
            if len(calls) > self.size:
                del calls[next(iter(calls))]

    def tap(self, call: Call) -> None:
        if call.obs.request_id and call.obs in self:
            self.metrics.drops.labels("tap", "judged-by-extauthz").inc()
            call.stop = True

    def __contains__(self, obs: Observation) -> bool:
        seen = self._calls.get(call_key(obs))
        return seen is not None and time.monotonic() - seen < self.ttl


class BothEnds:
    """The caller's and the callee's tap copies of one call, compared."""

    def __init__(self, joiner: Joiner, metrics: Metrics, judge: Judge) -> None:
        self.joiner = joiner
        self.metrics = metrics
        self.judge = judge

    def tap(self, call: Call) -> None:
        joined = self.joiner.add(call.obs)
        if joined is not None:
            _exchange, threats, inbound = joined
            self.metrics.joins.labels("mismatch" if threats else "joined").inc()
            if threats:
                flagged = dataclasses.replace(inbound, threats=[*inbound.threats, *threats])
                self.judge.judge(flagged, "envoy-tap")
        if call.obs.direction == "outbound":
            call.stop = True


class CachedDecision:
    def __init__(self, cache: DecisionCache, metrics: Metrics) -> None:
        self.cache = cache
        self._hit = metrics.cache.labels("hit")
        self._miss = metrics.cache.labels("miss")

    def check(self, call: Call) -> None:
        call.cache_key = key = self.cache.key(call.obs)
        if key is None:
            return
        cached = self.cache.lookup(key, call.obs)
        if cached is None:
            self._miss.inc()
            return
        self._hit.inc()
        call.verdict, call.cached = cached, True

    def done(self, call: Call) -> None:
        if call.cache_key is not None and not call.cached and call.verdict is not None:
            self.cache.remember(call.cache_key, call.verdict)


class Pipeline:
    """The steps serve composes; `judge_check`, `take_tap` and `take_ingested` are the doors."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        joiner: Joiner,
        pods: PodsByIp | None = None,
        recent: RecentCalls | None = None,
    ) -> None:
        self.engine = engine
        self.joiner = joiner
        self.pods = pods
        self.cache = DecisionCache(engine)
        self._claims_dropped = metrics.drops.labels("ingest", "client-threats")
        judge = Judge(engine, metrics, joiner)
        self.recent = recent if recent is not None else RecentCalls()
        self.control_plane = ControlPlaneConnections(engine)
        # a step implements any of check(call), tap(call), ingest(call) and done(call)
        self.steps: list[object] = [
            Count(metrics),
            self.control_plane,
            BothEnds(joiner, metrics, judge),
            JudgedByCheck(metrics),
            CachedDecision(self.cache, metrics),
            judge,
            self.recent,
        ]
        if pods is not None:  # in a cluster: serve's pod index
            self.steps.insert(0, CallerByIp(pods, metrics))
        # the hooks of each door, looked up once: a Check pays for no getattr
        self._hooks: dict[str, list[Callable[[Call], None]]] = {
            door: [getattr(s, door) for s in self.steps if hasattr(s, door)]
            for door in ("check", "tap", "ingest", "done")
        }

    def run(self, door: str, call: Call) -> Call:
        for hook in self._hooks[door]:
            hook(call)
            if call.stop:
                break
        for done in self._hooks["done"]:
            done(call)
        return call

    def judge_check(self, obs: Observation) -> Verdict:
        verdict = self.run("check", Call(obs, "extauthz")).verdict
        assert verdict is not None  # the Judge step always decides a check
        return verdict

    def take_tap(self, obs: Observation, prepared: Prepared | None = None) -> None:
        self.run("tap", Call(obs, "envoy-tap", learn=obs.complete, prepared=prepared))

    def take_ingested(self, obs: Observation, prepared: Prepared | None = None) -> None:
        """An observation a caller sent (the node tap, files): the threats it claims are
        dropped and counted (meshward.core.claims), the engine judges it afresh (with what the
        ingest worker decoded and found in it, `prepared`, when it did)."""
        obs, dropped = distrusted(obs)
        if dropped:
            self._claims_dropped.inc(dropped)
        if obs.seen_by == "envoy-tap":
            self.take_tap(obs, prepared)
            return
        source = obs.seen_by if obs.seen_by in SOURCES else "file"
        self.run("ingest", Call(obs, source, prepared=prepared))
