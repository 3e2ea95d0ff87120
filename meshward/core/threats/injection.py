"""libinjection's SQL and HTML5 tokenisers, called only where they can say something.

A libinjection call costs 2-4 µs from Python (it returns its token vector), so each is gated by a
cheap regex over what the tokeniser needs to find an injection at all. The gates are also
pre-filter indicators (signatures.py), so the pre-filter never hides a libinjection finding.
"""

from __future__ import annotations

import re

import libinjection

from meshward.core.threats.signatures import SQL_GATE, XSS_GATE

_SQL_GATE = re.compile(SQL_GATE, re.IGNORECASE | re.MULTILINE)
_XSS_GATE = re.compile(XSS_GATE, re.IGNORECASE | re.MULTILINE)
MAX_LEN = 4096  # libinjection is linear; this keeps one call bounded
# Fingerprints not trusted at level 1: "sos" (string, operator, string) is how prose with quoted
# words reads ("'/' is stripped": 59 of 85 libinjection-only false positives on 22k lines of
# English technical text) and on the attack corpora it only adds probes like '-' and '&'.
WEAK_AT_LEVEL_1 = frozenset({"sos"})


# A wildcard in a file path (/tmp/*.log, /home/*/docs, ~/src/*.c): a path that starts a word
# (after a space, '=', ':', '(' or ',', not after a quote) and has a '/*' that opens no comment
# (no second '*', no MySQL '!'). libinjection reads it as an unclosed comment after a word
# (fingerprint "nc"), which is how it reads any "word /*..." text.
_PATH_GLOB = re.compile(r"(?:^|(?<=[\s=:(,]))(?:~|\.{1,2})?(?:/[\w.~*?-]{1,255}){1,64}/\*(?![*!])")


def is_sqli(text: str, level: int = 1) -> bool:
    """libinjection's SQLi verdict on text (decoded, case preserved)."""
    if level < 3 and not _SQL_GATE.search(text):
        return False
    text = text[:MAX_LEN]
    result = libinjection.is_sql_injection(text)
    if level == 1 and result["fingerprint"] in WEAK_AT_LEVEL_1:
        return False
    if result["is_sqli"] and "/*" in text and _PATH_GLOB.search(text):
        # Read the path wildcards as the file names they are, and ask again.
        result = libinjection.is_sql_injection(
            _PATH_GLOB.sub(lambda m: m.group(0).replace("/*", "/_"), text)
        )
    return bool(result["is_sqli"])


def is_xss(text: str, level: int = 1) -> bool:
    """libinjection's XSS verdict on text (decoded, case preserved)."""
    if level < 3 and not _XSS_GATE.search(text):
        return False
    return bool(libinjection.is_xss(text[:MAX_LEN])["is_xss"])
