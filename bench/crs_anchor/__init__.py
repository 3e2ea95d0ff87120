"""The anchor of bench/detect.py: ModSecurity v3 (PyPI `libmodsecurity`) with the OWASP CRS.

The rules are read where they lie, never copied into the project: the CRS in
../shared/data/crs (crs-setup.conf.example and rules/, CRS v4) next to the repository, else
Debian's `modsecurity-crs` package (v3.3.4, weaker) under /usr/share/modsecurity-crs.
REQUEST-910-IP-REPUTATION.conf is skipped (this build has no GeoIP). ModSecurity's recommended
configuration turns on body access and the JSON/XML body processors; the same settings are
written here, or JSON and XML bodies would go unparsed.

Settings: anomaly scoring at paranoia level 1 (the CRS default), the engine On. A request is
"flagged" when the engine wants to interrupt it (anomaly score at the blocking threshold); its
findings are the meshward names of the attack classes of the rules that fired (by their
`attack-*` tags), so the bench scores both engines the same way.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from meshward.core.observation import Observation
from meshward.core.threats import names

try:
    from libmodsecurity import ModSecurity, RulesSet, Transaction
except ImportError:  # pragma: no cover - the bench says so and runs meshward alone
    ModSecurity = None  # type: ignore[assignment,misc]

DEBIAN_RULES = Path("/usr/share/modsecurity-crs/rules")
DEBIAN_SETUP = Path("/etc/modsecurity/crs/crs-setup.conf")
SKIP = frozenset({"REQUEST-910-IP-REPUTATION.conf"})
# What ModSecurity's modsecurity.conf-recommended sets before the CRS: the engine on, request
# bodies read (with the JSON and XML processors chosen by content type), limits.
BASE_CONFIG = r"""
SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction ProcessPartial
SecRequestBodyJsonDepthLimit 512
SecArgumentsLimit 1000
SecPcreMatchLimit 100000
SecPcreMatchLimitRecursion 100000
SecRule REQUEST_HEADERS:Content-Type "@rx ^(?:application(?:/soap\+|/)|text/)xml" \
    "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/json" \
    "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecResponseBodyAccess Off
SecAuditEngine Off
SecDebugLogLevel 0
"""
# The REST methods a mesh service takes (the CRS default allows GET HEAD POST OPTIONS only and
# flags the others by policy, which is no attack detection): crs-setup's rule 900200, enabled.
METHODS = """
SecAction "id:900200,phase:1,pass,t:none,nolog,\
    setvar:'tx.allowed_methods=GET HEAD POST OPTIONS PUT PATCH DELETE'"
"""
# CRS `attack-*` tags as meshward threat names (classes meshward has no name for stay "any")
TAGS = {
    "attack-sqli": names.SQLI,
    "attack-xss": names.XSS,
    "attack-rce": names.CMDI,
    "attack-lfi": names.TRAVERSAL,
    "attack-rfi": names.RFI,
    "attack-injection-php": names.PHP,
    "attack-injection-java": names.JAVA,
    "attack-ssti": names.SSTI,
    "attack-ssrf": names.SSRF,
    "attack-reputation-scanner": names.SCANNER_USER_AGENT,
}
BLOCKED = "CRS.Blocked"  # flagged, by rules of no class above


def shared_crs(shared_data: Path) -> Path:
    return shared_data / "crs"


class CrsAnchor:
    """One ModSecurity engine and one loaded rule set; `threats(obs)` scores a request."""

    def __init__(self, shared_data: Path) -> None:
        if ModSecurity is None:
            raise RuntimeError("libmodsecurity is not installed (make setup installs it)")
        crs = shared_crs(shared_data)
        if (crs / "rules").is_dir():
            setup, rules_dir = crs / "crs-setup.conf.example", crs / "rules"
            self.source = f"OWASP CRS from {crs}"
        elif DEBIAN_RULES.is_dir():
            setup, rules_dir = DEBIAN_SETUP, DEBIAN_RULES
            self.source = f"Debian modsecurity-crs from {DEBIAN_RULES}"
        else:
            raise RuntimeError(f"no CRS at {crs} nor {DEBIAN_RULES}")
        self.engine = ModSecurity()
        self.engine.set_connector_information("meshward-bench")
        self.rules = RulesSet()
        self._load(self.rules.load, BASE_CONFIG, "base configuration")
        self._load(self.rules.load_from_uri, str(setup), setup.name)
        self._load(self.rules.load, METHODS, "allowed methods")
        self.files = 0
        for f in sorted(rules_dir.glob("*.conf")):
            if f.name in SKIP:
                continue
            self._load(self.rules.load_from_uri, str(f), f.name)
            self.files += 1
        self.engine.set_log_callback(_drop)  # the rules that fired are read per transaction
        self.version = self.engine.who_am_i()

    @staticmethod
    def _load(fn: object, what: str, label: str) -> None:
        if fn(what) < 0:  # type: ignore[operator]
            raise RuntimeError(f"CRS: cannot load {label}")

    def threats(self, obs: Observation) -> set[str]:
        """Meshward names of the attack classes of the rules that fired, when the request is
        interrupted (BLOCKED when none maps); empty when it is let through."""
        t = Transaction(self.engine, self.rules)
        t.process_connection("10.0.0.2", 40000, "10.0.0.1", 80)
        uri = obs.path + ("?" + obs.query if obs.query else "")
        t.process_uri(uri, obs.method or "GET", "1.1")
        has_host = False
        for k, v in obs.headers:
            has_host |= k == "host"
            t.add_request_header(k, v)
        if not has_host:  # an HTTP/1.1 client always sends one
            t.add_request_header("host", "shop.example")
        if obs.body:
            t.add_request_header("content-length", str(len(obs.body)))
        blocked = _interrupted(t)
        t.process_request_headers()
        blocked = blocked or _interrupted(t)
        if not blocked:
            if obs.body:
                t.append_request_body(obs.body)
            t.process_request_body()
            blocked = _interrupted(t)
        with contextlib.suppress(Exception):
            t.process_logging()
        if not blocked:
            return set()
        fired = t.get_rule_messages()
        found = {TAGS[tag] for m in fired for tag in m.tags if tag in TAGS}
        return found or {BLOCKED}


def _interrupted(t: Transaction) -> bool:
    it = t.intervention()
    return bool(it and it.disruptive)


def _drop(line: str) -> None:
    """ModSecurity's server log: the bench reads the rules that fired from the transaction."""
