"""The engine facade: one Observation in, one Verdict out, following the namespace's mode.

Modes (README, "Modes"): `learn` allows everything and extends the allowlist; `monitor` learns
nothing and alerts on deviations and threats; `enforce` denies what breaks the allowlist or
carries a threat. Threat detection runs in every mode; a request carrying a threat is never
learned (an attacker must not be able to teach the allowlist).

The engine is sans-IO: `evaluate` decides and records in memory only, and reads no clock (nothing
in a verdict depends on time). What it learned and the alerts it raised wait until the app takes
them with `drain()` and writes them to its store in batches (meshward/app/flusher.py decides when,
from a clock it reads); profiles and modes come in through `load()` and `set_modes()`. The engine
is not thread-safe: one thread (the event loop) drives it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from meshward.core import redact, scoring
from meshward.core.allowlist import Allowlist, EndpointRule, Limits, ServiceProfile
from meshward.core.bodies import DecodedBody, decode_content, decode_grpc_messages
from meshward.core.edges import EdgeCount, EdgeCounts
from meshward.core.log import event
from meshward.core.modes import DEFAULT_MODE, EVERY_OTHER, MODES
from meshward.core.observation import Observation, Verdict, VerdictKind
from meshward.core.quota import AlertQuota, QuotaGate
from meshward.core.threats.inspection import Detector, Inspection, NoDetector

if TYPE_CHECKING:  # the detectors load Hyperscan lazily, only when threats are on
    from meshward.core.threats.signatures import CompiledCache

log = logging.getLogger("meshward.core.engine")

MAX_PENDING_ALERTS = AlertQuota().total  # alerts kept for the next drain (the store's history)
# learnings journaled per destination while a batch is judged elsewhere; past it the batch's
# learning of that destination is redone here instead (`install_learned`)
JOURNAL_MAX = 10_000

Learned = tuple[Observation, scoring.Features]  # one learning: what `scoring.learn` read


@dataclass
class Changes:
    """What changed since the last drain: profile documents (copies, safe to write from another
    thread) by destination, and the new alerts, oldest first."""

    profiles: dict[str, Any] = field(default_factory=dict)  # documents, or what drain's copy made
    alerts: list[dict[str, Any]] = field(default_factory=list)
    edges: list[EdgeCount] = field(default_factory=list)  # verdicts per caller -> destination

    def __bool__(self) -> bool:
        return bool(self.profiles or self.alerts or self.edges)


@dataclass(slots=True)
class Prepared:
    """What `Engine.prepare` worked out for one observation, for `evaluate` to use as is."""

    features: scoring.Features
    found: Inspection  # the detectors' findings
    failed: bool  # the detectors failed on it
    truncated: bool  # the body was cut (as sent, or decoding it hit max_body)


@dataclass
class EngineConfig:
    deny_threshold: float = 0.5  # enforce: deny at or above this score
    alert_threshold: float = 0.15  # monitor and enforce: alert at or above this score
    default_mode: str = DEFAULT_MODE
    threats: bool = True  # run the embedded-threat detectors
    threat_level: int = 1  # sensitivity 1..3
    max_body: int = 1 << 20  # body bytes decoded for learning and scoring
    alert_history: int = 1000  # alerts kept in memory (the store keeps more)
    limits: Limits = field(default_factory=Limits)
    # per source and destination, between two drains and in the store's history
    alert_quota: AlertQuota = field(default_factory=AlertQuota)


def detector_for(config: EngineConfig, cache: CompiledCache | None = None) -> Detector:
    """The detector `config` asks for: the shared embedded-threat one (level 1), one of its own
    level, or none when switched off. `cache` (from the app) keeps compiled signature
    databases between starts."""
    if not config.threats:
        return NoDetector()
    from meshward.core.threats import ThreatDetector, default_detector

    level = config.threat_level
    if level == 1:
        return default_detector(cache)
    return ThreatDetector(level=level, cache=cache)


class Engine:
    def __init__(
        self, config: EngineConfig | None = None, detector: Detector | None = None
    ) -> None:
        self.config = config or EngineConfig()
        self.detector = detector if detector is not None else detector_for(self.config)
        # what a cap or a quota turned away, by which: the app exports it (meshward_refused)
        self.refused: Counter[str] = Counter()
        self.allowlist = Allowlist(self.config.limits, self._refuse)
        self._modes: dict[str, str] = {}
        self._default_mode = self.config.default_mode
        self._dirty: set[str] = set()
        self._pending_alerts: list[dict[str, Any]] = []
        self._quota = QuotaGate(self.config.alert_quota, self.refused)
        self._alerts: deque[dict[str, Any]] = deque(maxlen=self.config.alert_history)
        self.edges = EdgeCounts()  # the app adds every verdict (cache hits too); drained here
        # per batch judged elsewhere (meshward/app/batchjudge.py): what was learned here about
        # its destinations meanwhile, replayed onto what it learned (None: past JOURNAL_MAX)
        self._journals: dict[int, dict[str, list[Learned] | None]] = {}
        self.journal_max = JOURNAL_MAX
        self.counters: dict[str, int] = {
            "evaluated": 0,
            "learned": 0,
            "alerts": 0,
            "denied": 0,
            "inspection_failed": 0,
        }

    def load(self, profiles: dict[str, dict[str, Any]], modes: dict[str, str]) -> None:
        """Start from stored profile documents and namespace modes (the app read them)."""
        for dest, doc in profiles.items():
            try:
                self.allowlist.add_profile(self._stored_profile(dest, doc))
            except ValueError as exc:  # one bad document must not lose the others
                event(log, "profile skipped", logging.ERROR, destination=dest, error=str(exc))
        self.set_modes(modes)

    def _stored_profile(self, destination: str, doc: dict[str, Any]) -> ServiceProfile:
        """A stored profile document read leniently: a rule this version refuses (a path
        template with a literal brace that older learning kept) is dropped, counted
        (meshward_refused{what="stored-rule"}) and logged; the rest of the profile stays."""

        def drop(index: int, error: str) -> None:
            self.refused["stored-rule"] += 1
            event(
                log,
                "stored rule dropped",
                logging.WARNING,
                destination=redact.text(destination[:200]),
                endpoint=index,
                error=redact.text(error[:300]),
            )

        return ServiceProfile.from_doc(doc, self.allowlist.limits, drop)

    # ---- modes
    def mode_of(self, namespace: str) -> str:
        return self._modes.get(namespace or "default", self._default_mode)

    @property
    def default_mode(self) -> str:
        """The mode of every namespace not set by name: the stored `*`, else the config's."""
        return self._default_mode

    def set_mode(self, namespace: str, mode: str) -> None:
        """One namespace's mode, in memory (the app stores it)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} ({', '.join(MODES)})")
        namespace = namespace or "default"
        if namespace == EVERY_OTHER:
            self._default_mode = mode
        else:
            self._modes[namespace] = mode
        event(log, "mode set", namespace=namespace, mode=mode)

    def set_modes(self, modes: dict[str, str]) -> None:
        """All namespace modes at once (as stored, e.g. after another process changed one);
        `*` is the mode of every namespace not named."""
        self._modes = {ns: m for ns, m in modes.items() if ns != EVERY_OTHER}
        self._default_mode = modes.get(EVERY_OTHER, self.config.default_mode)

    def modes(self) -> dict[str, str]:
        return dict(self._modes)

    # ---- the hot path
    def evaluate(
        self,
        obs: Observation,
        mode: str | None = None,
        learn: bool = True,
        prepared: Prepared | None = None,
    ) -> Verdict:
        """Score one Observation; in learn mode (and with `learn`) extend the allowlist.
        `prepared` is what `prepare` gave for it elsewhere (the ingest worker process), so
        neither the body's decoding nor the detectors run again here."""
        mode = mode or self.mode_of(obs.destination.namespace)
        self.counters["evaluated"] += 1
        if prepared is not None:
            if prepared.truncated and not obs.body_truncated:
                obs = dataclasses.replace(obs, body_truncated=True)
            f, found, failed = prepared.features, prepared.found, prepared.failed
            return self._decide(obs, mode, learn, f, found, failed)
        if obs.body:
            obs = self._plaintext(obs)
        f = scoring.features(obs, self.config.max_body)
        found, failed = self._inspect(obs, f.body)
        return self._decide(obs, mode, learn, f, found, failed)

    def dry_run(self, obs: Observation, mode: str) -> Verdict:
        """What `mode` would say of `obs`, changing nothing: nothing learned, no alert recorded,
        nothing counted (the enforce-readiness report replays traffic through it)."""
        if obs.body:
            obs = self._plaintext(obs)
        f = scoring.features(obs, self.config.max_body)
        found, failed = self._inspect(obs, f.body)
        return self._decide(obs, mode, False, f, found, failed, record=False)

    def prepare(self, obs: Observation) -> Prepared:
        """Everything `evaluate` reads of `obs` that depends on no state: the plaintext body's
        features (its shape already walked) and the detectors' findings. Stateless, so another
        process may run it and hand the result over (meshward/app/ingest.py)."""
        plain = self._plaintext(obs) if obs.body else obs
        f = scoring.features(plain, self.config.max_body)
        found, failed = self._inspect(plain, f.body)
        f.body.shape()  # learning and scoring read the shape: walked here, not by the taker
        return Prepared(f, found, failed, plain.body_truncated)

    def recheck(self, obs: Observation, cached: Verdict) -> Verdict | None:
        """A body-less request whose clean allow was cached (ext_authz's decision cache): the
        detectors still run on it, with evaluate's failure handling. `cached` when they find
        nothing; a full verdict (inspection-failed: alerted, denied in enforce) when they fail;
        None when they find something, for the caller to evaluate it in full."""
        found, failed = self._inspect(obs, None)
        if not failed:
            return None if found.threats or found.partial else cached
        mode = self.mode_of(obs.destination.namespace)
        self.counters["evaluated"] += 1
        f = scoring.features(obs, self.config.max_body)
        return self._decide(obs, mode, True, f, found, failed)

    def _decide(
        self,
        obs: Observation,
        mode: str,
        learn: bool,
        f: scoring.Features,
        found: Inspection,
        failed: bool,
        record: bool = True,
    ) -> Verdict:
        threats = obs.threats + found.threats if obs.threats else found.threats
        dest = obs.destination.key
        # reasons a source or a failure brings, whatever the profile says
        flags = scoring.flags(obs.threats, failed) if failed or obs.threats else None
        if mode == "learn" or mode == "off":  # off: not judged, not learned; threats alert
            reasons: list[str] = []
            rule_name = None
            if not threats and not failed and mode == "learn":
                if learn:  # None past the destination cap (counted, logged): not learned
                    profile = self.allowlist.learnable(dest)
                    rule = self._learn(profile, obs, f) if profile is not None else None
                    if profile is not None:
                        self.counters["learned"] += 1
                    rule_name = rule.name if rule else None
                else:  # a read-only look (meshward score) at what learn mode would see
                    reasons, rule = scoring.score_reasons(self.allowlist.get(dest), obs, f)
                    rule_name = rule.name if rule else None
            if flags:
                reasons = [*reasons, *flags]
            score = scoring.combine(reasons, len(threats))
            verdict: VerdictKind = "alert" if threats or failed else "allow"
        else:
            reasons, rule = scoring.score_reasons(self.allowlist.get(dest), obs, f)
            rule_name = rule.name if rule else None
            if flags:
                reasons = [*reasons, *flags]
            score = scoring.combine(reasons, len(threats))
            verdict = "allow"
            if threats or score >= self.config.alert_threshold:
                verdict = "alert"
            if mode == "enforce" and (threats or score >= self.config.deny_threshold):
                verdict = "deny"
        v = Verdict(
            verdict,
            score,
            reasons,
            threats,
            rule_name,
            mode,
            dest,
            obs.source.key,
            failed or found.partial or f.body.partial or obs.body_truncated,
        )
        if verdict != "allow" and record:
            self._record_alert(obs, v)
        return v

    def _learn(
        self, profile: ServiceProfile, obs: Observation, f: scoring.Features
    ) -> EndpointRule | None:
        """Extend `profile` with one request; journaled for the batches judged elsewhere that
        touch its destination."""
        dest = profile.destination
        self._dirty.add(dest)
        if self._journals:
            for journal in self._journals.values():
                if dest in journal:
                    entries = journal[dest]
                    if entries is not None and len(entries) < self.journal_max:
                        entries.append((obs, f))
                    else:
                        journal[dest] = None
        return scoring.learn(profile, obs, f)

    def _refuse(self, what: str, destination: str, n: int = 1) -> None:
        """A cap turned learning away (`n` times): counted; logged at the 1st, 2nd, 4th,
        8th... time, so a flood is seen in the log without flooding it."""
        before = self.refused[what]
        self.refused[what] = after = before + n
        if after.bit_length() > before.bit_length():  # passed a power of two
            event(
                log,
                "learning refused",
                logging.WARNING,
                cap=what,
                destination=redact.text(destination[:200]),
                times=1 << (after.bit_length() - 1),
            )

    def _plaintext(self, obs: Observation) -> Observation:
        """The Observation with its body as the app reads it: inspect and learn the plaintext,
        never compressed bytes (Content-Encoding, and gRPC's per-message compression)."""
        encoding = grpc_encoding = ""
        for name, value in obs.headers:  # one pass: this runs for every request with a body
            if name == "content-encoding" and not encoding:
                encoding = value
            elif name == "grpc-encoding" and not grpc_encoding:
                grpc_encoding = value.strip().lower()
        plain, cut = obs.body, False
        if encoding:
            plain, cut = decode_content(encoding, plain, self.config.max_body)
        if grpc_encoding not in ("", "identity") and obs.content_type.startswith(
            "application/grpc"
        ):
            plain, grpc_cut = decode_grpc_messages(grpc_encoding, plain, self.config.max_body)
            cut = cut or grpc_cut
        if plain is obs.body and not cut:
            return obs
        return dataclasses.replace(
            obs, body=plain, body_size=len(plain), body_truncated=obs.body_truncated or cut
        )

    def _inspect(self, obs: Observation, body: DecodedBody | None) -> tuple[Inspection, bool]:
        """The detectors' findings, and whether they failed. A detector bug on some input must
        not let that request through unseen (Envoy fails open in learn and monitor): the failure
        is logged, and the request is neither learned nor allowed quietly."""
        try:
            return self.detector.inspect(obs, body), False
        except Exception as exc:
            self.counters["inspection_failed"] += 1
            event(
                log,
                "inspection failed",
                logging.ERROR,
                destination=obs.destination.key,
                method=obs.method,
                path=redact.path(obs.path[:200]),
                error=repr(exc)[:200],
            )
            return Inspection(), True

    def _record_alert(self, obs: Observation, v: Verdict) -> None:
        self.counters["alerts"] += 1
        if v.verdict == "deny":
            self.counters["denied"] += 1
        alert = v.as_dict()
        alert["threats"] = redact.shown_threats(v.threats)
        alert.update(
            time=obs.time,
            namespace=obs.destination.namespace or "default",
            method=obs.method,
            path=redact.path(obs.path),
            seen_by=obs.seen_by,
            protocol=obs.protocol,
            request_id=obs.request_id,
        )
        self._keep_alert(alert, v.source, v.destination)

    def add_alert(self, alert: dict[str, Any]) -> bool:
        """An alert raised outside the engine (the controller's mesh guard findings, through
        serve's API): kept, drained and stored as the engine's own, under the same quotas.
        False when a quota left it out."""
        self.counters["alerts"] += 1
        return self._keep_alert(alert, str(alert["source"]), str(alert["destination"]))

    def keep_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Alerts this engine's code raised in another process (an ingest batch judged in the
        worker, already counted there): kept under this engine's quotas, in order."""
        for alert in alerts:
            self._keep_alert(alert, str(alert["source"]), str(alert["destination"]))

    def _keep_alert(self, alert: dict[str, Any], source: str, destination: str) -> bool:
        self._alerts.append(alert)  # the recent view (bounded), for an engine without a store
        refused = self._quota.admit(source, destination)
        if refused:  # the verdict stands; only its record is left out: counted, logged once
            key = source if refused == "alert-source-quota" else destination
            if self._quota.first_refusal(f"{refused}:{key}"):
                event(log, "alerts over quota", logging.WARNING, quota=refused, key=key[:200])
            return False
        self._pending_alerts.append(alert)
        return True

    # ---- what the app reads and drains
    def alerts(self, limit: int = 100, namespace: str | None = None) -> list[dict[str, Any]]:
        """The newest alerts this engine raised, first (the app's store keeps the history)."""
        recent: Iterator[dict[str, Any]] = reversed(self._alerts)
        if namespace:
            recent = (a for a in recent if a.get("namespace") == namespace)
        return list(itertools.islice(recent, limit))

    def learning_pending(self, destination: str) -> bool:
        """Whether this engine learned about `destination` since the last drain."""
        return destination in self._dirty

    def replace_profile(self, destination: str, doc: dict[str, Any] | None) -> None:
        """Another writer's version of one profile (a shared store): it replaces this engine's;
        None or a document without rules (and without tombstones: those must stay known) drops
        it. Whether learning is pending stays as is. A bad rule is dropped alone
        (`_stored_profile`); ValueError on a bad document (the profile is then left alone)."""
        if doc is None or not (doc.get("endpoints") or doc.get("removed")):
            self.allowlist.services.pop(destination, None)
            return
        profile = self._stored_profile(destination, doc)
        if profile.destination != destination:
            raise ValueError(f"document of {profile.destination!r} given for {destination!r}")
        self.allowlist.services[destination] = profile

    # ---- batches judged elsewhere (meshward/app/batchjudge.py)
    def add_counts(
        self, counters: dict[str, int], refused: dict[str, int], destination: str = ""
    ) -> None:
        """Counters and refusals of a batch judged elsewhere, added (refusals logged as
        `_refuse` logs them)."""
        for name, n in counters.items():
            self.counters[name] = self.counters.get(name, 0) + n
        for what, n in refused.items():
            if n:
                self._refuse(what, destination, n)

    def journal_open(self, batch: int, destinations: list[str]) -> None:
        """From now until `journal_close(batch, ...)`, learning about `destinations` here is
        recorded, so it can be replayed onto what the batch learned."""
        self._journals[batch] = {dest: [] for dest in destinations}

    def journal_entries(self, batch: int, destination: str) -> list[Learned] | None:
        """What was journaled for `batch` about `destination` (None: past `journal_max`)."""
        return self._journals.get(batch, {}).get(destination)

    def journal_close(self, batch: int) -> None:
        self._journals.pop(batch, None)

    def install_learned(
        self, batch: int, destination: str, profile: ServiceProfile, snapshotted: object
    ) -> bool:
        """What a batch judged elsewhere learned of `destination`, from the profile object
        `snapshotted`: installed, with what was learned here meanwhile replayed onto it (a
        serial order: the batch, then those), when that object is still the live one and the
        journal held it all. False otherwise (replaced meanwhile: a replica's sync, a review
        edit; or past JOURNAL_MAX): the caller learns the batch's observations here instead
        (`relearn`)."""
        journal = self._journals.get(batch, {})
        entries = journal.get(destination)
        if entries is None or self.allowlist.services.get(destination) is not snapshotted:
            return False
        profile.limits, profile.on_refuse = self.allowlist.limits, self._refuse
        for obs, f in entries:
            scoring.learn(profile, obs, f)
        self.allowlist.services[destination] = profile
        self._dirty.add(destination)
        journal.pop(destination, None)  # installed: what is learned from now goes into it
        return True

    def relearn(self, destination: str, learned: list[Learned]) -> None:
        """A batch's learning of `destination` done here, observation by observation (its
        verdicts were counted where it was judged)."""
        for obs, f in learned:
            profile = self.allowlist.learnable(destination)
            if profile is not None:
                self._learn(profile, obs, f)

    def pending_alerts(self) -> list[dict[str, Any]]:
        """The alerts the next drain will hand over, oldest first."""
        return list(self._pending_alerts)

    def drain(self, copy: Callable[[ServiceProfile], Any] = ServiceProfile.to_doc) -> Changes:
        """Hand over what changed since the last drain: the learned profiles, snapshotted by
        `copy` (`to_doc()` copies, so the app may write them from another thread; the ingest
        worker pickles them), and the new alerts."""
        profiles = {}
        for d in self._dirty:
            p = self.allowlist.get(d)
            if p is not None:
                profiles[d] = copy(p)
        self._dirty.clear()
        alerts, self._pending_alerts = self._pending_alerts, []
        self._quota.reset()
        return Changes(profiles, alerts, self.edges.drain())
