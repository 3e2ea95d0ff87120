"""libinjection's SQL and HTML5 tokenisers, called only where they can say something.

A libinjection call costs 2-4 µs from Python (it returns its token vector), so each is gated by a
cheap regex over what the tokeniser needs to find an injection at all. The gates are also
pre-filter indicators (signatures.py), so the pre-filter never hides a libinjection finding.
"""

from __future__ import annotations

import re

import libinjection

from meshward.threats.signatures import SQL_GATE, XSS_GATE

_SQL_GATE = re.compile(SQL_GATE, re.IGNORECASE | re.MULTILINE)
_XSS_GATE = re.compile(XSS_GATE, re.IGNORECASE | re.MULTILINE)
MAX_LEN = 4096  # libinjection is linear; this keeps one call bounded
# Fingerprints not trusted at level 1: "sos" (string, operator, string) is how prose with quoted
# words reads ("'/' is stripped": 59 of 85 libinjection-only false positives on 22k lines of
# English technical text) and on the attack corpora it only adds probes like '-' and '&'.
WEAK_AT_LEVEL_1 = frozenset({"sos"})


def is_sqli(text: str, level: int = 1) -> bool:
    """libinjection's SQLi verdict on text (decoded, case preserved)."""
    if level < 3 and not _SQL_GATE.search(text):
        return False
    result = libinjection.is_sql_injection(text[:MAX_LEN])
    if level == 1 and result["fingerprint"] in WEAK_AT_LEVEL_1:
        return False
    return bool(result["is_sqli"])


def is_xss(text: str, level: int = 1) -> bool:
    """libinjection's XSS verdict on text (decoded, case preserved)."""
    if level < 3 and not _XSS_GATE.search(text):
        return False
    return bool(libinjection.is_xss(text[:MAX_LEN])["is_xss"])
