"""Places a payload can sit in besides a query value: path segments, parameter names, bodies
sent without a Content-Type, cookie values. Each is read as the application reads it, so a
signature anchored at a value's start sees a payload there as it does in a query value."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector
from meshward.core.threats.names import CMDI, SQLI, TRAVERSAL, XSS

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
