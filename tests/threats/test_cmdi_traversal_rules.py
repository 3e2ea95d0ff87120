"""Command-injection and path-traversal rules added for general attack indicators: recon probes
(`which curl`), whole-value command substitution of a builtin, wildcard and quote-split spellings
of binaries, variable substring expansion, escaped parent steps, short file URIs and NUL-byte
truncation. Each is checked in a query value, a JSON leaf and a header, under encodings, and
against look-alike benign values."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from meshward.observation import Observation
from meshward.threats import ThreatDetector
from meshward.threats.normalise import unsplit

DET = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)
CMDI = "Command.Injection"
TRAVERSAL = "Path.Traversal"


def q(value: str) -> Observation:
    return Observation("file", path="/s", query="q=" + quote(value, ""))


def js(value: str) -> Observation:
    body = json.dumps({"user": {"bio": value}}).encode()
    return Observation("file", method="POST", path="/u",
                       headers=[("content-type", "application/json")], body=body)


def form(value: str) -> Observation:
    return Observation("file", method="POST", path="/f",
                       headers=[("content-type", "application/x-www-form-urlencoded")],
                       body=("note=" + quote(value, "")).encode())


def hdr(value: str) -> Observation:
    return Observation("file", path="/", headers=[("referer", value)])


def names(obs: Observation, det: ThreatDetector = DET) -> set[str]:
    return {t.name for t in det.inspect(obs).threats}


PLACES = {"query": q, "json": js, "form": form, "header": hdr}

POSITIVE = [
    (CMDI, "which curl"),  # recon: is the download tool there?
    (CMDI, " whereis  nc "),
    (CMDI, "command -v python3"),
    (CMDI, "`true`"),  # blind probe: the whole value is a command substitution
    (CMDI, '"$(false)"'),
    (CMDI, ";w'h'o'am'i"),  # quotes the shell joins back
    (CMDI, '|c""at /tmp/x'),
    (CMDI, "&& who$@ami"),
    (CMDI, ";wh\\oami"),
    (CMDI, "a;/???/c?t /???/p?ss??"),  # wildcards standing in for a binary
    (CMDI, "|/bin/wh?ami"),
    (CMDI, ";cat${PATH:0:1}tmp${PATH:0:1}x"),  # substring expansion conjures a '/'
    (CMDI, "x?u=\\`whoami\\`"),  # escaped backtick
    (CMDI, "system($cmd)"),  # exec function on a variable
    (TRAVERSAL, "file:/etc/passwd"),  # RFC 8089 short form
    (TRAVERSAL, "file:/c:/windows/system.ini"),
    (TRAVERSAL, "file:c:\\boot.txt"),
    (TRAVERSAL, "\\.\\.\\/\\.\\.\\/app/config"),  # backslash-escaped ../
    (TRAVERSAL, ".\\./.\\./secret"),
    (TRAVERSAL, "shell.php\x00.jpg"),  # NUL truncation
    (TRAVERSAL, "include.inc\x00"),
    (TRAVERSAL, "report\x00.pdf"),
]

ENCODINGS = {
    "plain": lambda s: s,
    "double-url": lambda s: quote(s, ""),  # q() and form() encode once more
    "percent-u": lambda s: "".join(f"%u{ord(c):04x}" for c in s),
    "html-entities": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "fullwidth": lambda s: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s),
    "upper": str.upper,
}


@pytest.mark.parametrize("where", sorted(PLACES))
@pytest.mark.parametrize(("name", "payload"), POSITIVE)
def test_found_in_every_place(name: str, payload: str, where: str) -> None:
    value = payload.replace("\x00", "%00") if where == "header" else payload
    assert name in names(PLACES[where](value)), (where, payload)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize(("name", "payload"), POSITIVE)
def test_found_under_encodings(name: str, payload: str, encoding: str) -> None:
    if encoding == "html-entities" and "\x00" in payload:
        pytest.skip("HTML decodes &#0; to U+FFFD, not to a NUL: no truncation")
    encoded = ENCODINGS[encoding](payload)
    assert name in names(q(encoded)), (encoding, encoded)
    assert name in names(js(encoded)), (encoding, encoded)


BENIGN = [
    "which one is cheaper?", "which colour", "which python version do you support, 3.11?",
    "`True` is returned when the key exists", "returns `false` on error", "true", "'false'",
    "don't; I'd rather not", "O'Neil's shop", "C:\\Users\\alice\\file.txt",
    "notes; dir\\file and docs\\readme", "a*b*c = 6", "alice@example.com",
    "What? /?/ no idea", "/usr/bin/*", "/srv/??", "3.14\x00.5", "${HOME}/work",
    "${name:-default}",
    "see file: /etc/app.conf", "profile:/users/42", "the file:line format",
    "C:\\Program Files\\app\\app.exe", "end of string\x00", "3.14\x00", "version 1.2",
    "https://example.com/download?file=report.pdf", "./configure && make", "a.b.c",
]


@pytest.mark.parametrize("value", BENIGN)
def test_benign_look_alikes_are_clean(value: str) -> None:
    assert names(q(value)) == set(), value
    assert names(js(value)) == set(), value
    assert names(form(value)) == set(), value


@pytest.mark.parametrize("value", [p for _, p in POSITIVE] + BENIGN)
def test_prefilter_agrees_with_full_inspection(value: str) -> None:
    for make in PLACES.values():
        obs = make(value)
        assert names(obs) == names(obs, FULL), value


def test_unsplit_only_joins_words_with_two_marks_or_a_backslash() -> None:
    assert unsplit(";w'h'o'am'i") == ";whoami"
    assert unsplit("who$@ami") == "whoami"
    assert unsplit("wh\\oami") == "whoami"
    assert unsplit("don't; i'd say") == ""  # one apostrophe per word: unchanged
    assert unsplit("plain text") == ""


def test_whole_value_substitution_needs_the_whole_value() -> None:
    """Inside prose a Markdown code span looks the same, so only a whole value counts."""
    assert CMDI not in names(js("set it to `true` when ready"))
    assert CMDI in names(js(" `true` "))
