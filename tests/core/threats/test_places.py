"""Places a payload can sit in besides a query value: path segments, parameter names, bodies
sent without a Content-Type, cookie values. Each is read as the application reads it, so a
signature anchored at a value's start sees a payload there as it does in a query value."""

from __future__ import annotations

from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest

from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector
from meshward.core.threats.names import (
    CMDI,
    PHP,
    SERVER_SIDE_INCLUDE,
    SQLI,
    TRAVERSAL,
    XSS,
    XXE,
)

DET = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)

ATTACKS = [
    ("1' union select 1,2--", SQLI),
    ("select session_user;", SQLI),
    ("cat /etc/passwd", CMDI),
    ("ls -l /tmp", CMDI),
    ("ping -i 30 127.0.0.1", CMDI),
    ("/usr/bin/id|", CMDI),
    ("..;/etc/passwd", TRAVERSAL),
    ("<script>alert(1)</script>", XSS),
]


def names(obs: Observation, det: ThreatDetector = DET) -> set[str]:
    return {t.name for t in det.inspect(obs).threats}


def in_segment(value: str) -> Observation:
    return Observation("t", method="GET", path="/api/items/" + quote(value, "") + "/detail")


def untyped_form(value: str) -> Observation:
    return Observation("t", method="POST", path="/submit", body=b"q=" + quote(value, "").encode())


def in_cookie(value: str) -> Observation:
    cookie = "sid=3f9a2c; pref=" + quote(value, " /'()*,:<>@[]`{|}")
    return Observation("t", method="GET", path="/", headers=[("cookie", cookie)])


def param_name(value: str) -> Observation:
    return Observation("t", method="GET", path="/search", query=quote(value, "") + "=1")


@pytest.mark.parametrize(("payload", "name"), ATTACKS)
@pytest.mark.parametrize("where", [in_segment, untyped_form, in_cookie, param_name])
def test_payload_found_in_every_place(payload: str, name: str, where: object) -> None:
    obs = where(payload)  # type: ignore[operator]
    assert name in names(obs)
    assert names(obs) == names(obs, FULL)  # the pre-filter hides nothing


def test_path_segment_finding_names_the_path() -> None:
    threats = DET.inspect(in_segment("1' or '1'='1")).threats
    assert [t.location for t in threats] == ["path"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/whoami",  # a route named like a command is a route
        "/v1/users/id/profile",
        "/hosts/ifconfig",
        "/docs/select/all",
        "/files/report-2024.pdf",
        "/users/o'brien",
        "/search/rock%20%26%20roll",
        "/api/v1/orders/12345/items",
    ],
)
def test_benign_paths_stay_clean(path: str) -> None:
    assert names(Observation("t", method="GET", path=path)) == set()


def test_untyped_body_that_is_no_form_is_read_as_text() -> None:
    obs = Observation("t", method="POST", path="/notes", body=b"Meeting moved; see you at 5")
    assert names(obs) == set()
    obs = Observation("t", method="POST", path="/notes", body=b"<script>alert(1)</script>")
    assert XSS in names(obs)


def test_benign_cookies_stay_clean() -> None:
    cookie = "sid=3f9a2c; theme=dark; lang=en-GB; cart=eyJpdGVtcyI6WzEsMl19; _ga=GA1.2.3.4"
    obs = Observation("t", method="GET", path="/", headers=[("cookie", cookie)])
    assert names(obs) == set()


def xml_text(value: str) -> Observation:
    """The payload as an XML client library sends it: escaped, in an element of a document with
    a declaration and a namespace."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><order xmlns="urn:shop:v1"><q>'
        + escape(value)
        + "</q></order>"
    )
    return Observation(
        "t",
        method="POST",
        path="/api",
        headers=[("content-type", "application/xml")],
        body=body.encode(),
    )


def xml_attribute(value: str) -> Observation:
    body = '<?xml version="1.0"?><order q="' + escape(value, {'"': "&quot;"}) + '"/>'
    return Observation(
        "t", method="POST", path="/api", headers=[("content-type", "text/xml")], body=body.encode()
    )


def multipart(value: str) -> Observation:
    body = f'--b1\r\nContent-Disposition: form-data; name="q"\r\n\r\n{value}\r\n--b1--\r\n'
    return Observation(
        "t",
        method="POST",
        path="/upload",
        headers=[("content-type", "multipart/form-data; boundary=b1")],
        body=body.encode(),
    )


@pytest.mark.parametrize(("payload", "name"), ATTACKS)
@pytest.mark.parametrize("where", [xml_text, xml_attribute, multipart])
def test_payload_found_in_bodies(payload: str, name: str, where: object) -> None:
    obs = where(payload)  # type: ignore[operator]
    assert name in names(obs)
    assert names(obs) == names(obs, FULL)


SOAP = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
    b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    b'<soap:Body><m:GetPrice xmlns:m="https://shop.example/prices">'
    b"<m:Item>Apples &amp; pears</m:Item></m:GetPrice></soap:Body></soap:Envelope>"
)


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><note><to>Ana</to><body>See you at 5</body></note>',
        SOAP,
        b'<?xml version="1.0"?><?xml-stylesheet type="text/xsl" href="style.xsl"?><a>x</a>',
        b'<feed xmlns="http://www.w3.org/2005/Atom"><title>News</title></feed>',
        b"<!DOCTYPE note><note>hi</note>",
    ],
)
def test_xml_documents_are_markup_not_xss(body: bytes) -> None:
    """libinjection's HTML tokeniser reads an XML declaration or an xmlns attribute as
    script-capable markup; an XML document is read by the signatures, its text by every check
    (every SOAP request was Cross.Site.Scripting before)."""
    for ctype in ("application/xml", "text/xml", "application/soap+xml"):
        obs = Observation(
            "t", method="POST", path="/ws", headers=[("content-type", ctype)], body=body
        )
        assert names(obs) == set()
        assert names(obs, FULL) == set()


@pytest.mark.parametrize(
    "line",
    [
        "`ssh deploy@build01` and got a permission error",
        "Hint: `kill -9 1234`",
        "Good night all; sleep well",
    ],
)
def test_prose_in_xml_text_is_read_as_in_json(line: str) -> None:
    assert names(xml_text(line)) == set()


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b"<a><script>alert(1)</script></a>", XSS),  # an element injected into the document
        (b'<a><img src="x" onerror="alert(1)"/></a>', XSS),
        (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
            XXE,
        ),
        (b'<a><!--#exec cmd="id"--></a>', SERVER_SIDE_INCLUDE),
        (b"<a><?php system($_GET[1]); ?></a>", PHP),
        (b"<a><img src=x onerror=alert(1)></a>", XSS),  # not well-formed: read as text
    ],
)
def test_markup_attacks_in_xml_documents(body: bytes, name: str) -> None:
    obs = Observation(
        "t", method="POST", path="/ws", headers=[("content-type", "text/xml")], body=body
    )
    assert name in names(obs)
    assert names(obs) == names(obs, FULL)
