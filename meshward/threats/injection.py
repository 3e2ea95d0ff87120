"""libinjection's SQL and HTML5 tokenisers, called only where they can say something.

A libinjection call costs 2-4 µs from Python (it returns its token vector), so each is gated by a
cheap regex over characters the tokeniser needs to find an injection at all.
"""

from __future__ import annotations

import re

import libinjection

# SQLi needs a string break, a comment, a statement break or an operator word to succeed.
_SQL_GATE = re.compile(r"['\"`#;]|--|/\*|\b(?:or|and|xor|union|select|having|order|exec|div)\b")
# XSS needs markup or an attribute context.
_XSS_GATE = re.compile(r"<|\bon[a-z]{3,30}\s*=|script\s*:|\bstyle\s*=")
MAX_LEN = 4096  # libinjection is linear; this keeps one call bounded


def is_sqli(text: str, level: int = 1) -> bool:
    """libinjection's SQLi verdict on text (decoded, case preserved)."""
    if level < 3 and not _SQL_GATE.search(text):
        return False
    return bool(libinjection.is_sql_injection(text[:MAX_LEN])["is_sqli"])


def is_xss(text: str, level: int = 1) -> bool:
    """libinjection's XSS verdict on text (decoded, case preserved)."""
    if level < 3 and not _XSS_GATE.search(text):
        return False
    return bool(libinjection.is_xss(text[:MAX_LEN])["is_xss"])
