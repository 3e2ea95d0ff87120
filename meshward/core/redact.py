"""Redaction: what meshward stores, logs or serves never carries a caller's secrets.

The policy (docs/security.md, "Redaction"):

- values of query parameters, form and JSON fields, and headers whose *name* says secret
  (password, token, api key, secret, session, cookie, authorization, card number, cvv, ...) are
  replaced by `[redacted]`; the name stays, so rules and alerts still say where;
- `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie` and the usual API-key headers
  are always redacted whole;
- in any text (evidence, paths, query strings, exchange summaries): JWTs, `Bearer` credentials,
  card numbers (13 to 19 digits passing the Luhn check) and long random tokens (24+ characters
  mixing letters and digits) are replaced by `[redacted:KIND]`;
- a path segment that looks like a password (8 to 64 characters mixing upper and lower case
  letters and digits, like `/reset/Summer2024pw`) is replaced by `[redacted]` where a path is
  shown, and is never learned as a literal (the allowlist takes it as `{str}`);
- a threat's evidence found in a secret-named place (`query:password`, `header:cookie:sid`,
  `body:$.card.cvv`) is replaced whole; any other evidence is redacted as text, then
  HTML-escaped (`shown_threats`, applied where the engine makes an alert).

Redaction keeps the shape a human needs to judge an alert (which parameter, which kind of
value) and drops the value. It is pure and bounded: linear regular expressions on text the
callers already cap.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote_plus

from meshward.core.observation import Threat

REDACTED = "[redacted]"

_SECRET_NAME = re.compile(
    r"pass(?:word|wd|phrase)|^pass$|pwd|secret|token|api[-_.]?key|apikey|access[-_.]?key|"
    r"private[-_.]?key|auth(?!or)|credential|session|sessid|^sid$|[-_.]sid$|cookie|csrf|xsrf|"
    r"^card(?:[-_.]?(?:num(?:ber)?|no))?$|card[-_.]?num|cc[-_.]?num|^pan$|cvv|cvc|^ssn$|iban|"
    r"^otp$|^pin$|signature|^sig$|bearer",
    re.IGNORECASE,
)
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-access-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-amz-security-token",
        "x-goog-iap-jwt-assertion",
        "x-forwarded-access-token",
    }
)

_JWT = re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)(\s+|%20|\+)([\w~+/=.-]{8,})")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_LONG_TOKEN = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{24,}(?![\w-])")
_HEXLIKE = re.compile(r"[0-9a-fA-F-]+")
_PASSWORDISH = re.compile(r"(?=[^/]*\d)(?=[^/]*[a-z])(?=[^/]*[A-Z])[^/.\s]{8,64}")
_LOCATION_PARTS = re.compile(r"[:.\[\]]")


def is_secret_name(name: str) -> bool:
    """Does a parameter, field or header name say its value is a secret?"""
    return bool(name) and (name.lower() in SECRET_HEADERS or bool(_SECRET_NAME.search(name)))


def luhn(digits: str) -> bool:
    total, odd = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if odd:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        odd = not odd
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[redacted:card]" if 13 <= len(digits) <= 19 and luhn(digits) else match.group(0)


def _token(match: re.Match[str]) -> str:
    text = match.group(0)
    if _HEXLIKE.fullmatch(text):  # hashes, UUIDs and trace ids are ids, not credentials
        return text
    return "[redacted:token]"


def text(value: str) -> str:
    """Free text with credentials and card numbers taken out."""
    if len(value) < 13:  # shorter than any pattern below
        return value
    value = _JWT.sub("[redacted:jwt]", value)
    value = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", value)
    value = _CARD.sub(_card, value)
    return _LONG_TOKEN.sub(_token, value)


def value(name: str, raw: str) -> str:
    """One named value (a parameter, field or header): gone if the name says secret, else
    the text with credentials taken out."""
    return REDACTED if is_secret_name(name) else text(raw)


def header(name: str, raw: str) -> str:
    return REDACTED if name.lower() in SECRET_HEADERS or is_secret_name(name) else text(raw)


def headers(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n, header(n, v)) for n, v in pairs]


def query(qs: str) -> str:
    """A query string with secret-named values redacted (names and order kept)."""
    if not qs:
        return qs
    out = []
    for part in qs.split("&"):
        name, eq, _value = part.partition("=")
        if eq and is_secret_name(unquote_plus(name)):
            out.append(f"{name}={quote(REDACTED)}")
        else:
            out.append(text(part))
    return "&".join(out)


def secret_segment(segment: str) -> bool:
    """Is one path segment a credential (a JWT, a long token, a card number, a password)?"""
    if len(segment) < 8:
        return False
    return bool(_PASSWORDISH.fullmatch(segment)) or text(segment) != segment


def path(value: str) -> str:
    """A path fit to store or show: credential segments taken out, the shape kept."""
    if len(value) < 9:  # "/" and a segment shorter than any credential
        return value
    return "/".join(_segment(s) for s in value.split("/"))


def _segment(segment: str) -> str:
    shown = text(segment)
    return REDACTED if shown == segment and _PASSWORDISH.fullmatch(segment) else shown


def target(path_and_query: str) -> str:
    """A request target (path and query) fit to store or show."""
    p, sep, qs = path_and_query.partition("?")
    return path(p) + (sep + query(qs) if sep else "")


def escaped(value: str) -> str:
    """Text that is safe in HTML whatever shows it: `& < > " '` as character references.

    Evidence is what an attacker wrote; it is stored and served as escaped text, so a
    dashboard or a log viewer that renders it as HTML shows it and runs nothing. Applied once,
    where an alert is made (the engine): not idempotent (`&amp;` would become `&amp;amp;`).
    """
    return html.escape(value, quote=True)


def evidence(value: str) -> str:
    """A threat's evidence (or location) fit to store and serve: redacted, then escaped."""
    return escaped(text(value))


def _location_name(location: str) -> str:
    """The name a threat's location ends in (`query:pw` -> pw, `body:$.a.cvv` -> cvv)."""
    parts = [p for p in _LOCATION_PARTS.split(location) if p]
    return parts[-1] if len(parts) > 1 else ""


def shown_threats(threats: Iterable[Threat]) -> list[dict[str, str]]:
    """Threats as an alert stores and serves them: evidence from a secret-named place
    replaced, any other evidence redacted; all of it HTML-escaped."""
    out = []
    for t in threats:
        secret = is_secret_name(_location_name(t.location))
        out.append(
            {
                "name": escaped(t.name),
                "location": evidence(t.location),
                "evidence": REDACTED if secret and t.evidence else evidence(t.evidence),
            }
        )
    return out
