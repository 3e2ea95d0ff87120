"""Normalisation: undo the encodings attackers hide payloads behind, before signatures match.

Bounded by construction: input is capped by the caller, decoding runs at most MAX_ROUNDS times
and every step is a single linear regex pass.
"""

from __future__ import annotations

import html
import re

from meshward.core.observation import whole

MAX_ROUNDS = 4  # repeated decoding (double, triple encoding) stops here even if not stable

_PERCENT = re.compile(rb"%(?:u([0-9a-fA-F]{4})|([0-9a-fA-F]{2}))")
_OVERLONG = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]")
_BACKSLASH = re.compile(r"\\(?:u\{?([0-9a-fA-F]{4})\}?|x([0-9a-fA-F]{2})|([nrt0]))")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": "\x00"}
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_VSPACE = re.compile(r"[\x0b\x0c]")  # vertical tab, form feed: whitespace to browsers
# SQL inline comments used as whitespace; MySQL executable comments keep their content.
_SQL_COMMENT = re.compile(r"/\*!?\d{0,6}|\*/")
_COMMENT_BODY = re.compile(r"/\*[^*]{0,200}\*/")
# Pre-filter indicators for the rewrites of `alternate` (also in signatures.INDICATORS).
COMMENT_INDICATOR = r"/\*[^;,*\r\n]|/\*\*/|[^*/,\s]\*/"  # not the */* of Accept headers
PATH_INDICATOR = r"(?:^|[^:/])[/\\]\.?[/\\]|\\"
# A Windows path's \t, \n, \r (C:\temp, \windows\repair) that `decode` read as escapes: a tab or
# line break right after a drive colon or a backslash-separated name (restored by `alternate`).
WINDOWS_ESCAPE_INDICATOR = r"(?:^|[^\w])[a-z]:[\t\r\n]|\\[\w.$-]{1,64}[\t\r\n]"
# Shell quoting inside a word, which the shell joins back: w'h'o'am'i, c""at, who$@ami, wh\oami,
# and cmd.exe's caret escapes (p^o^w^e^r^shell). Two marks at least, or a backslash (one quote
# is how apostrophes look: don't, I'd). An unset variable inside a word expands to nothing
# (c${u}at).
_MARK = r"['\"`\\$@*^]"
_EMPTY_VAR_INDICATOR = r"[a-z]\$\{[a-z_][a-z0-9_]{0,20}\}[a-z]"
SPLIT_WORD_INDICATOR = (
    rf"[a-z]{_MARK}{{2,4}}[a-z]|[a-z]{_MARK}{{1,3}}[a-z]{{1,12}}{_MARK}{{1,3}}[a-z]|[a-z]\\[a-z]|"
    rf"(?:^|[\s;&|(`])[\"'][a-z]{{1,12}}[\"'][a-z]|"  # a word opening quoted: "wh"oami
    + _EMPTY_VAR_INDICATOR
)
_EMPTY_VAR = re.compile(r"(?<=[a-z])\$\{[a-z_][a-z0-9_]{0,20}\}(?=[a-z])")
SPLIT_WORD_HINT = re.compile(SPLIT_WORD_INDICATOR)
_SPLIT_WORD = re.compile(
    rf"(?:(?<![\w\"'])[\"'](?=[a-z]{{1,12}}[\"'][a-z]))?[a-z]{{1,24}}(?:{_MARK}{{1,4}}[a-z]{{1,12}}){{1,8}}"
)
_MARKS = re.compile(_MARK)
COMMENT_HINT = re.compile(COMMENT_INDICATOR, re.MULTILINE)
PATH_HINT = re.compile(PATH_INDICATOR, re.MULTILINE)
_SLASHES = re.compile(r"[/\\]+(?:\.[/\\]+)*")
WINDOWS_ESCAPE_HINT = re.compile(WINDOWS_ESCAPE_INDICATOR, re.MULTILINE)
_WINDOWS_ESCAPED = re.compile(r"((?:^|(?<=[^\w]))[a-z]:|\\[\w.$-]{1,64})([\t\r\n])", re.MULTILINE)
_UNESCAPE = {"\t": "\\t", "\r": "\\r", "\n": "\\n"}
# Log4j lookups that resolve to their default text: ${lower:j}, ${::-j}, ${env:X:-j}, ${upper:J}
_LOG4J = re.compile(r"\$\{(?:lower|upper|::-|[a-z]{1,10}:[^:{}]{0,40}:-)([^{}$]{0,20})\}")
# Look-alikes that Unicode-normalising or best-fit-mapping backends turn into ASCII: fullwidth
# forms (U+FF01..U+FF5E) and the slashes and dots used in traversal. U+FFFD (what invalid bytes
# decode to) is dropped, as decoders that skip invalid sequences do.
_FOLD: dict[int, int | None] = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FOLD.update(
    {
        0x2215: 0x2F,
        0x2044: 0x2F,
        0x29F8: 0x2F,
        0x2216: 0x5C,
        0xFE68: 0x5C,
        0x29F9: 0x5C,
        0x2024: 0x2E,
        0xFE52: 0x2E,
        0xFFFD: None,
    }
)
_CONTROL_ESCAPE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _percent_bytes(m: re.Match[bytes]) -> bytes:
    if m.group(1) is not None:
        return chr(int(m.group(1), 16)).encode("utf-8", "surrogatepass")
    return bytes((int(m.group(2), 16),))


def _overlong(m: re.Match[bytes]) -> bytes:
    """Overlong UTF-8 (%c0%ae for '.') decodes to the ASCII it spells, as old decoders did."""
    b = m.group(0)
    cp = (
        ((b[0] & 0x1F) << 6) | (b[1] & 0x3F)
        if len(b) == 2
        else ((b[1] & 0x3F) << 6) | (b[2] & 0x3F)
    )
    return chr(cp).encode("utf-8") if cp < 0x80 else b


def url_decode(text: str, *, plus_as_space: bool = False) -> str:
    """One round of percent decoding (%XX, %uXXXX, overlong UTF-8); invalid UTF-8 replaced."""
    if "%" not in text:
        return text.replace("+", " ") if plus_as_space else text
    raw = text.encode("utf-8", "surrogatepass")
    if plus_as_space:
        raw = raw.replace(b"+", b" ")
    raw = _PERCENT.sub(_percent_bytes, raw)
    if b"\xc0" in raw or b"\xc1" in raw or b"\xe0" in raw:
        raw = _OVERLONG.sub(_overlong, raw)
    return raw.decode("utf-8", "replace")


def _backslash(m: re.Match[str]) -> str:
    if m.group(3):
        return _ESCAPES[m.group(3)]
    return chr(int(m.group(1) or m.group(2), 16))


def decode(text: str, *, plus_as_space: bool = False) -> str:
    """Repeated URL, HTML-entity and backslash-escape decoding until stable (MAX_ROUNDS)."""
    for n in range(MAX_ROUNDS):
        before = text
        text = url_decode(text, plus_as_space=plus_as_space and n == 0)
        if "&" in text:
            text = html.unescape(text)
        if "\\" in text:
            text = _BACKSLASH.sub(_backslash, text)
        if text == before:
            break
    # \ud83d\ude00 escapes decode one half at a time: join the pairs, replace lone halves
    return whole(text)


def normalise(text: str, *, plus_as_space: bool = False) -> str:
    """Decoded, NUL- and control-stripped, fullwidth-folded, lower-cased text."""
    return fold(decode(text, plus_as_space=plus_as_space)).lower()


def look_alikes(text: str) -> str:
    """Fullwidth and look-alike slashes and dots folded to ASCII (nothing stripped)."""
    return text if text.isascii() else text.translate(_FOLD)


def fold(text: str) -> str:
    """Look-alike characters folded to ASCII, NUL and control characters stripped (vertical
    tab and form feed become spaces)."""
    text = look_alikes(text)
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    if _VSPACE.search(text):
        text = _VSPACE.sub(" ", text)
    return text


def alternate(norm: str) -> str:
    """A second spelling of normalised text for signatures: a Windows path's `\\t`, `\\n`,
    `\\r` that decoding read as escapes put back (C:\\temp), SQL comments as spaces, path
    separators collapsed (`/./`, `//`, `\\`), Log4j default lookups resolved. Each rewrite runs
    only where a pre-filter indicator (signatures.INDICATORS) matches, so the pre-filter stays
    sound. Returns "" when nothing changed."""
    alt = norm
    if ("\t" in alt or "\r" in alt or "\n" in alt) and WINDOWS_ESCAPE_HINT.search(alt):
        for _ in range(MAX_ROUNDS):  # C:\temp\tools: each name's escape after the one before
            nxt = _WINDOWS_ESCAPED.sub(lambda m: m.group(1) + _UNESCAPE[m.group(2)], alt)
            if nxt == alt:
                break
            alt = nxt
    if ("/*" in alt or "*/" in alt) and COMMENT_HINT.search(alt):
        alt = _COMMENT_BODY.sub(" ", alt) if "/*!" not in alt else alt
        alt = _SQL_COMMENT.sub(" ", alt)
    if "${" in alt:
        for _ in range(MAX_ROUNDS):
            nxt = _LOG4J.sub(r"\1", alt)
            if nxt == alt:
                break
            alt = nxt
    if ("/" in alt or "\\" in alt) and PATH_HINT.search(alt):
        alt = _SLASHES.sub("/", alt)
    return "" if alt == norm else alt


def unsplit(norm: str) -> str:
    """Normalised text with shell quoting removed from inside words that carry two marks or
    more, or a backslash (w'h'o'am'i, wh\\oami, p^o^w^e^r^shell -> whoami, powershell), and
    variables inside a word dropped (c${u}at -> cat), for the command-injection signatures;
    "" when there is none.
    Only runs where SPLIT_WORD_INDICATOR (a pre-filter indicator) matches."""
    if not SPLIT_WORD_HINT.search(norm):
        return ""

    def join(m: re.Match[str]) -> str:
        word = m.group(0)
        bare = _MARKS.sub("", word)
        return bare if len(word) - len(bare) >= 2 or "\\" in word else word

    out = _EMPTY_VAR.sub("", norm) if "${" in norm else norm
    out = _SPLIT_WORD.sub(join, out)
    return "" if out == norm else out


def evidence(text: str, limit: int = 128) -> str:
    """At most `limit` characters, control characters escaped (safe for logs and dashboards)."""
    text = text[: limit * 2]
    if _CONTROL_ESCAPE.search(text):
        text = _CONTROL_ESCAPE.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)
    return text[:limit]
