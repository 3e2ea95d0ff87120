"""The families issue 15 added: LDAP filter injection, mail header injection, server-side
includes and scanner user agents. Each with what it must find and what it must leave alone."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from meshward.core.observation import Observation
from meshward.core.threats import HTTP_THREATS, ThreatDetector
from meshward.core.threats.names import (
    CMDI,
    LDAP_INJECTION,
    MAIL_HEADER_INJECTION,
    SCANNER_USER_AGENT,
    SERVER_SIDE_INCLUDE,
)

DET = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)


def query(value: str) -> Observation:
    return Observation("t", method="GET", path="/search", query="q=" + quote(value, ""))


def field(value: str) -> Observation:
    body = json.dumps({"subject": value}).encode()
    return Observation(
        "t", method="POST", path="/mail", headers=[("content-type", "application/json")], body=body
    )


def agent(value: str) -> Observation:
    return Observation("t", method="GET", path="/", headers=[("user-agent", value)])


def names(obs: Observation, det: ThreatDetector = DET) -> set[str]:
    return {t.name for t in det.inspect(obs).threats}


def test_the_new_names_are_reported_names() -> None:
    for name in (LDAP_INJECTION, MAIL_HEADER_INJECTION, SERVER_SIDE_INCLUDE, SCANNER_USER_AGENT):
        assert name in HTTP_THREATS


@pytest.mark.parametrize(
    "value",
    [
        "*)(uid=*))(|(uid=*",
        "admin)(&)",
        "admin*)((|userPassword=*)",
        "*)(|(objectclass=*)",
        "x)(|(cn=*))",
        "(|(mail=*)(cn=admin))",
        "*)(objectClass=*",
    ],
)
def test_ldap_filter_injection(value: str) -> None:
    for obs in (query(value), field(value)):
        assert LDAP_INJECTION in names(obs)
        assert names(obs) == names(obs, FULL)


@pytest.mark.parametrize(
    "value",
    [
        "Smith (John) (born 1970)",
        "see (a) and (b)",
        "f(x)(y) = x*y",
        "price: 5 * (3 + 2)",
        "(cn=John Smith)",  # one filter is a value of a directory search form, not a break-out
        "O'Brien & Sons (UK) Ltd",
    ],
)
def test_parentheses_in_text_are_no_ldap_injection(value: str) -> None:
    assert LDAP_INJECTION not in names(query(value))


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.com\nBcc: everyone@example.com",
        "alice@example.com\r\nCc:victim@example.com",
        "Hello\r\nContent-Type: text/html",
        "x\r\nRCPT TO:<victim@example.com>",
        "INBOX\r\nA1 LOGOUT",
        "a\r\nHELO evil.example\r\n",
    ],
)
def test_mail_header_injection(value: str) -> None:
    for obs in (query(value), field(value)):
        assert MAIL_HEADER_INJECTION in names(obs)
        assert names(obs) == names(obs, FULL)


@pytest.mark.parametrize(
    "value",
    [
        "Hi team,\nTo: whom it may concern, the deploy is done.",
        "-----Original Message-----\nFrom: Ana\nTo: Support\nSubject: refund",
        "line one\nline two\n2 select the right plan",
        "Dear Sir,\nplease find attached the invoice",
    ],
)
def test_multiline_text_is_no_mail_injection(value: str) -> None:
    assert MAIL_HEADER_INJECTION not in names(field(value))


def test_a_pasted_mail_with_cc_lines_counts_only_from_level_2() -> None:
    value = "FYI, see below\nCc: bob@example.com"
    assert MAIL_HEADER_INJECTION not in names(field(value))
    assert MAIL_HEADER_INJECTION in names(field(value), ThreatDetector(level=2))


@pytest.mark.parametrize(
    ("value", "also"),
    [
        ('<!--#exec cmd="id"-->', CMDI),
        ('<!--#include virtual="/index.html"-->', None),
        ('<!--#echo var="DATE_LOCAL"-->', None),
        ("<!--#printenv -->", None),
        ('<!-- #config timefmt="%y" -->', None),
    ],
)
def test_server_side_include(value: str, also: str | None) -> None:
    found = names(query(value))
    assert SERVER_SIDE_INCLUDE in found
    if also:
        assert also in found


def test_html_comments_are_no_ssi() -> None:
    for value in ("<!-- TODO: fix -->", "<!-- #1 item -->", "<!--# no directive -->"):
        assert SERVER_SIDE_INCLUDE not in names(query(value))


@pytest.mark.parametrize(
    "ua",
    [
        "sqlmap/1.7.2#stable (https://sqlmap.org)",
        "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:007254)",
        "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
        "Fuzz Faster U Fool v2.1.0-dev",
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Nuclei - Open-source project",
        "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
        "WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)",
        "gobuster/3.6",
    ],
)
def test_scanner_user_agents(ua: str) -> None:
    assert names(agent(ua)) == {SCANNER_USER_AGENT}
    assert names(agent(ua), FULL) == {SCANNER_USER_AGENT}


@pytest.mark.parametrize(
    "ua",
    [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
        "curl/8.5.0",
        "python-requests/2.31.0",
        "Go-http-client/1.1",
        "grpc-go/1.60.1",
        "Envoy/1.29",
        "kube-probe/1.29",
        "okhttp/4.12.0",
    ],
)
def test_ordinary_clients_are_no_scanners(ua: str) -> None:
    assert names(agent(ua)) == set()


def test_a_tool_name_outside_the_user_agent_is_a_word() -> None:
    assert names(query("how to use sqlmap safely")) == set()
    assert names(Observation("t", method="GET", path="/docs/nmap")) == set()
