"""Parser differentials: bodies the application's framework decodes, that the detectors must
read the same way (else the attack reaches the app unseen).

Each case is one a common framework decodes: aiohttp (request.text()/json()/post() honour the
charset parameter with any Python codec; multipart parts' Content-Transfer-Encoding and
charset), Python's json.loads(bytes) (Flask get_json, Django json.loads(request.body): UTF-16/32
detected whatever the content type), Werkzeug/aiohttp/Go (RFC 2231 filename*), Node/Go/Java
gzip readers (every member of a gzip stream), and every form framework (field names).
"""

from __future__ import annotations

import base64
import gzip
import json
from urllib.parse import quote

import pytest

from meshward.core.bodies import decode_body, decode_content
from meshward.core.engine import Engine
from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector

DETECTOR = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)

ATTACKS = {
    "SQL.Injection": "' or 1=1 --",
    "Cross.Site.Scripting": "<script>alert(1)</script>",
    "Path.Traversal": "../../etc/passwd",
    "Command.Injection": "; cat /etc/passwd",
}
FORM = "application/x-www-form-urlencoded"


def _post(content_type: str | None, body: bytes, *headers: tuple[str, str]) -> Observation:
    h = [("content-type", content_type)] if content_type is not None else []
    return Observation("file", method="POST", path="/api", headers=[*h, *headers], body=body)


def _names(obs: Observation, detector: ThreatDetector = DETECTOR) -> set[str]:
    return {t.name for t in detector.inspect(obs).threats}


def _multipart(payload: bytes, head: str = "", disposition: str = 'name="q"') -> bytes:
    return (
        b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'
        + f"--XyZ\r\nContent-Disposition: form-data; {disposition}\r\n{head}\r\n".encode()
        + payload
        + b"\r\n--XyZ--\r\n"
    )


CASES = {
    # aiohttp decodes the body with the declared charset (EBCDIC, UTF-7, UTF-16 ...)
    "json charset=ibm037": lambda p: _post(
        "application/json; charset=ibm037", json.dumps({"q": p}).encode("cp037")
    ),
    "text charset=ibm037": lambda p: _post("text/plain; charset=ibm037", p.encode("cp037")),
    "form charset=ibm037, escapes in it": lambda p: _post(
        FORM + "; charset=ibm037", ("a=1&q=" + quote(p.encode("cp037"))).encode("cp037")
    ),
    "form charset=ibm037, ASCII body, EBCDIC escapes": lambda p: _post(
        FORM + "; charset=ibm037", ("a=1&q=" + quote(p.encode("cp037"))).encode()
    ),
    # Python's json.loads(bytes) and Jackson detect UTF-16/32 whatever the content type says
    "utf-16 json, no content type": lambda p: _post(None, json.dumps({"q": p}).encode("utf-16")),
    "utf-16-be json, no content type": lambda p: _post(
        None, json.dumps({"q": p}).encode("utf-16-be")
    ),
    "utf-32-be json, octet-stream": lambda p: _post(
        "application/octet-stream", json.dumps({"q": p}).encode("utf-32-be")
    ),
    # form field names: every framework hands them to the app (query names are inspected too)
    "form field name": lambda p: _post(FORM, ("a=1&" + quote(p) + "=x").encode()),
    "json sent as a form (Go/PHP/Django read the raw body)": lambda p: _post(
        FORM, ('{"q": "' + "".join(f"\\u{ord(c):04x}" for c in p) + '"}').encode()
    ),
    "multipart field name": lambda p: _post(
        "multipart/form-data; boundary=XyZ",
        _multipart(b"x", disposition=f'name="{p.replace(chr(34), chr(39))}"'),
    ),
    # RFC 2231/5987 file names (Werkzeug, aiohttp, Go's mime package decode them)
    "multipart filename*": lambda p: _post(
        "multipart/form-data; boundary=XyZ",
        _multipart(b"x", disposition="name=\"f\"; filename*=UTF-8''" + quote(p.encode(), "")),
    ),
    "multipart filename and filename*": lambda p: _post(
        "multipart/form-data; boundary=XyZ",
        _multipart(
            b"x",
            disposition='name="f"; filename="a.txt"; filename*=UTF-8\'\'' + quote(p, ""),
        ),
    ),
    # aiohttp decodes a part's Content-Transfer-Encoding (Go's mime quoted-printable) ...
    "multipart part base64": lambda p: _post(
        "multipart/form-data; boundary=XyZ",
        _multipart(base64.b64encode(p.encode()), "Content-Transfer-Encoding: base64\r\n"),
    ),
    "multipart part quoted-printable": lambda p: _post(
        "multipart/form-data; boundary=XyZ",
        _multipart(
            "".join(f"={b:02X}" for b in p.encode()).encode(),
            "Content-Transfer-Encoding: quoted-printable\r\n",
        ),
    ),
    # ... and a text part's charset
    "multipart part charset=ibm037": lambda p: _post(
        "multipart/form-data; boundary=XyZ",
        _multipart(p.encode("cp037"), "Content-Type: text/plain; charset=ibm037\r\n"),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("threat", sorted(ATTACKS))
def test_framework_decoded_attack_is_found(case: str, threat: str) -> None:
    obs = CASES[case](ATTACKS[threat])
    assert threat in _names(obs), case
    assert threat in _names(obs, FULL), case  # and the pre-filter hides nothing


@pytest.mark.parametrize("threat", sorted(ATTACKS))
def test_gzip_second_member_is_inspected(threat: str) -> None:
    """gunzip, Go's gzip.Reader, Node's zlib and Java's GZIPInputStream read every member."""
    body = json.dumps({"q": ATTACKS[threat]}).encode()
    for data in (
        gzip.compress(body[:1]) + gzip.compress(body[1:]),
        gzip.compress(b"") + gzip.compress(body),
    ):
        plain, partial = decode_content("gzip", data)
        assert plain == body and not partial
        obs = _post("application/json", data, ("content-encoding", "gzip"))
        verdict = Engine().evaluate(obs, mode="monitor")
        assert threat in {t.name for t in verdict.threats}


def test_gzip_members_are_bounded() -> None:
    member = gzip.compress(b"a")
    plain, partial = decode_content("gzip", member * 1000)
    assert partial and 0 < len(plain) < 1000
    plain, partial = decode_content("gzip", member + b"trailing garbage")
    assert plain == b"a" and not partial
    plain, partial = decode_content("gzip", gzip.compress(b"x" * 100) * 3, max_bytes=150)
    assert partial and len(plain) == 150


def test_both_readings_of_a_declared_charset_are_inspected() -> None:
    """A charset that the app may or may not honour: the bytes read as UTF-8 (Go, PHP) and as
    the charset says (aiohttp, Express) are both inspected."""
    body = json.dumps({"q": ATTACKS["Cross.Site.Scripting"]}).encode()
    assert "Cross.Site.Scripting" in _names(_post("application/json; charset=utf-16", body))
    assert "Cross.Site.Scripting" in _names(_post("text/plain; charset=ibm037", body))


def test_benign_bodies_stay_clean() -> None:
    benign = json.dumps({"name": "Zoë's café", "note": "see page 3; thanks"})
    for obs in (
        _post("application/json; charset=utf-16", benign.encode("utf-16")),
        _post("application/json; charset=iso-8859-1", benign.encode("latin-1")),
        _post(None, benign.encode("utf-16")),
        _post(FORM + "; charset=ibm037", b"name=Zo%C3%AB&city=Paris"),
        _post(
            "multipart/form-data; boundary=XyZ",
            _multipart(b"hello", "", "name=\"f\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
        ),
        _post("application/grpc", b"\x00\x00\x00\x00\x07\x0a\x05hello"),
    ):
        assert _names(obs) == set() and _names(obs, FULL) == set()


def test_multipart_names_and_decoded_parts_in_fields() -> None:
    body = _multipart(
        base64.b64encode(b"hello"),
        "Content-Transfer-Encoding: base64\r\n",
        'name="f"; filename="a.txt"; filename*=UTF-8\'\'%E2%82%AC.txt',
    )
    d = decode_body("multipart/form-data; boundary=XyZ", body)
    assert ("$", "f") in d.keys and ("$", "a") in d.keys
    assert ("$.f.filename", "a.txt") in d.fields and ("$.f.filename", "€.txt") in d.fields
    assert ("$.f", "aGVsbG8=") in d.fields and ("$.f", "hello") in d.fields


def test_utf16_binary_sniff_keeps_grpc_binary() -> None:
    """gRPC frames start with NUL bytes (the UTF-32-BE pattern) and must stay binary: their
    printable runs are still scanned as before."""
    frame = b"\x00\x00\x00\x00\x1b\x0a\x19" + ATTACKS["SQL.Injection"].encode() + b" xxxxxxxxxxxxx"
    assert "SQL.Injection" in _names(_post("application/grpc", frame))
