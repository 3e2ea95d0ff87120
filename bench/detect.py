"""Threat detection benchmark: detection and false-positive rates, and time per request.

One run prints, per sensitivity level:
- per threat class, the detection rate on ../shared/data/payloads/* with each payload placed in
  a query value (URL-encoded), a path segment, a JSON body field, a form body sent without a
  Content-Type, a cookie value, a header (user-agent), an XML element's text and a
  multipart/form-data field (see `place`);
- per class, the detection rate on the attack rows of httpparams/payload_train.csv, and the
  false-positive rate on its `norm` rows, placed the same way;
- the false-positive rate on 20,000 normal requests of the engine's OpenAPI sample traffic, on
  20,000 lines of English technical prose (Python stdlib comments) in a JSON field, and on
  20,000 lines of generated benign user text (benign_text: developer chat and Markdown with
  inline code, shell-tutorial text, support tickets, product descriptions) in a JSON field;
and then the CPU time per typical request (1 KB JSON body, 10 headers) and per request of 500
distinct OpenAPI sample requests, against a baseline of normalisation alone (decode every value
the detector would look at, match nothing) and against the detectors of older commits loaded
into the same process (--baseline REF, see baseline_detector), in rotated rounds.

Last, the anchor side by side (`side_by_side`, bench/crs_anchor): ModSecurity v3 with the OWASP
CRS at paranoia level 1 and meshward at level 1 on the same requests (a seeded sample of each
list, every placement): detection per class, false positives, and µs per typical request.

A payload counts as detected in a placement when a threat of its class is reported there
("any" columns: any threat at all). Blank lines and comment lines ("# " at the start) of the
payload lists are not payloads and are skipped; duplicates are counted once.

Some rows of a class's lists cannot be that attack: a lone separator runs no command, a path
made only of `./` steps leaves no directory. For Command.Injection and Path.Traversal the
"excl" columns give the rate over the rows left once a general rule (printed with the tables,
see NOT_OF_CLASS) sets such rows aside; the strict rate stays the figure the goal is about.
Path.Traversal rows holding an unfilled `{file}` placeholder (`//{file}`) are also scored with
it filled by a few sensitive targets (FILLS), printed under the tables.

Run: .venv/bin/python bench/detect.py [--levels 1,2,3] [--show N] [--show-prose N]
     [--anchor-rows N (0: no anchor)] [--baseline REF ...] [--rounds N] [--time-only]
Data: $MESHWARD_SHARED, else ../shared/data next to the repository.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import importlib
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape as xml_escape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshward.core.bodies import decode_body, parse_query
from meshward.core.observation import Observation
from meshward.core.threats import ThreatDetector
from meshward.core.threats.normalise import alternate, decode, look_alikes, normalise

CLASSES = {
    "sqli": "SQL.Injection",
    "xss": "Cross.Site.Scripting",
    "cmdi": "Command.Injection",
    "traversal": "Path.Traversal",
    "path-traversal": "Path.Traversal",
    "nosql": "NoSQL.Injection",
    "ssti": "Template.Injection",
}
PLACEMENTS = ("query", "path", "json", "form", "cookie", "header", "xml", "mpart")
# placements pooled in the side-by-side figures: CRS flags every untyped body (see side_by_side)
POOLED = tuple(w for w in PLACEMENTS if w != "form")

# Names of commands, for the "not a command" rule: the POSIX.1-2017 utilities and shell
# builtins, common Linux, network and scripting tools, and Windows cmd.exe commands and tools.
# Independent of the detector's own lists (signatures.py), and wide on purpose: a row that names
# any of them stays counted.
_COMMAND_NAMES = """
    admin alias ar asa at awk basename batch bc bg c99 cal cat cd cflow chgrp chmod chown cksum
    cmp comm command compress cp crontab csplit ctags cut cxref date dd delta df diff dirname
    du echo ed env ex expand expr false fc fg file find fold fort77 fuser gencat get getconf
    getopts grep hash head iconv id ipcrm ipcs jobs join kill lex link ln locale localedef
    logger logname lp ls m4 mailx make man mesg mkdir mkfifo more mv newgrp nice nl nm nohup od
    paste patch pathchk pax pr printf prs ps pwd read renice rm rmdel rmdir sact sccs sed sh
    sleep sort split strings strip stty tabs tail talk tee test time touch tput tr true tsort
    tty type ulimit umask unalias uname uncompress unexpand unget uniq unlink uucp uustat uux
    val vi wait wc what who write xargs yacc zcat
    source export set unset eval exec exit return trap shift readonly local declare typeset
    print let history
    whoami hostname ifconfig ip netstat ss ping ping6 traceroute tracepath nslookup dig host
    curl wget nc ncat netcat socat telnet ssh scp sftp ftp tftp rsync bash zsh ksh dash csh tcsh
    fish busybox python python2 python3 perl ruby php node nodejs lua java gcc cc base64 base32
    xxd openssl uptime sudo su passwd useradd usermod userdel groupadd chpasswd shutdown reboot
    halt poweroff systemctl service last lastlog w finger lsof lsmod modprobe insmod mount
    umount free top dmesg journalctl route arp iptables nft nmap tcpdump less tac rev md5sum
    sha1sum sha256sum sum gzip gunzip bzip2 xz tar zip unzip gawk nawk egrep fgrep locate which
    whereis printenv getent groups chattr lsattr stat readlink realpath mktemp timeout watch
    setsid strace chroot cpio shred uname apt yum dnf apk pip npm docker kubectl
    cmd powershell pwsh dir copy move del erase ren rename md rd cls ver vol ipconfig
    systeminfo tasklist taskkill net netsh reg regedit wmic sc schtasks certutil bitsadmin
    tracert pathping findstr attrib icacls cacls cscript wscript mshta rundll32 regsvr32
    msiexec start call query qwinsta quser runas xcopy robocopy comp tree sysinfo
"""
COMMAND_WORDS = frozenset(_COMMAND_NAMES.split())
_SHELL_JOIN = re.compile(r"(?<=\w)(?:['\"`\\^]|\$@)+(?=\w)")  # w'h'o'am'i, wh\oami, p^ing
_WORD = re.compile(r"[a-z][a-z0-9_]*(?:\.exe)?")
_NAME_WILDCARD = re.compile(r"[a-z][?*]|[?*][a-z]")  # /???/c?t, wh?ami
_SUBSTITUTION = re.compile(r"`[^`]+`|\$\(")
# Functions of PHP, Python, Ruby, Perl, Java and Node that hand their argument to a shell.
EXEC_FUNCTIONS = frozenset(
    (
        "system",
        "exec",
        "passthru",
        "shell_exec",
        "popen",
        "proc_open",
        "pcntl_exec",
        "spawn",
        "execsync",
        "spawnsync",
        "execfile",
        "execfilesync",
        "check_output",
        "check_call",
        "getoutput",
        "getstatusoutput",
        "processbuilder",
    )
)


def not_a_command(payload: str) -> bool:
    """True when the row can run no command (see CMD_RULE)."""
    text = look_alikes(decode(payload)).lower()
    if _SUBSTITUTION.search(text):
        return False
    text = _SHELL_JOIN.sub("", text)
    if _NAME_WILDCARD.search(text):
        return False
    for m in _WORD.finditer(text):
        word = m.group().removesuffix(".exe")
        if text[m.end() : m.end() + 1] == "(":
            if word in EXEC_FUNCTIONS:
                return False
            continue  # another function call (phpinfo(), sleep(5)), not a command
        if word in COMMAND_WORDS:
            return False
    return True


CMD_RULE = (
    "not a command: after decoding and joining shell-quoted words (w'h'o'am'i), no word "
    f"names a command (one of {len(COMMAND_WORDS)}: POSIX utilities and builtins, common "
    "Linux/network/Windows tools; a word followed by '(' is a function call), no call of a "
    f"function that runs a shell ({len(EXEC_FUNCTIONS)}: system, exec, popen, ...), no `...` "
    "or $( substitution, and no wildcard standing in for a name (/???/c?t)"
)
_PLACEHOLDER = re.compile(r"\{[^{}/]{0,40}\}")


def not_a_traversal(payload: str) -> bool:
    """True when the row names no file outside its directory (see PATH_RULE)."""
    text = _PLACEHOLDER.sub("", look_alikes(decode(payload)))
    if "\x00" in text or ":" in text or "~" in text:
        return False
    # '\\' read both ways: as a Windows separator, and as a shell escape (\.\./ is ../)
    for reading in (text.replace("\\", "/"), text.replace("\\", "")):
        for segment in reading.split("/"):
            if len(segment) > 1 and not segment.strip("."):
                return False  # a '..' or '...' step
            segment = segment.rstrip(". ")  # as Windows reads a name: trailing dots dropped
            if len(set(segment)) > 1:
                return False  # a name
            # else empty, '.' or one character repeated: a filler or overflow probe (/aaaa...)
    return True


PATH_RULE = (
    "not a traversal: after decoding and folding look-alikes (fullwidth dots), no ':' (drive, "
    "scheme), '~' or NUL, and every path segment ({placeholders} removed, '\\' read both as "
    "'/' and as an escape, trailing dots dropped as Windows does) is empty, '.', or one "
    "character repeated (filler probes such as /aaaa...): no '..' step and no file named"
)
# Per class: (rule text, row classifier)
NOT_OF_CLASS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "Command.Injection": (CMD_RULE, not_a_command),
    "Path.Traversal": (PATH_RULE, not_a_traversal),
}


def shared_data() -> Path:
    env = os.environ.get("MESHWARD_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def place(payload: str, where: str) -> Observation:
    """An Observation carrying the payload in one place, as a client library would send it:
    a query value, a path segment (every reserved character percent-encoded, as
    encodeURIComponent does), a JSON body field, a form body sent without a Content-Type (what
    most clients then send), a cookie value, the user-agent header, the text of an element of
    an XML document (escaped, with a declaration and a namespace, as SOAP clients send it), or
    a multipart/form-data field ("mpart")."""
    if where == "query":
        return Observation("file", method="GET", path="/search", query="q=" + quote(payload, ""))
    if where == "path":
        return Observation("file", method="GET", path="/api/items/" + quote(payload, ""))
    if where == "json":
        return Observation(
            "file",
            method="POST",
            path="/api/items",
            headers=[("content-type", "application/json")],
            body=json.dumps({"name": "widget", "q": payload}).encode(),
        )
    if where == "form":
        return Observation(
            "file", method="POST", path="/api/items", body=("q=" + quote(payload, "")).encode()
        )
    if where == "xml":
        doc = '<?xml version="1.0" encoding="UTF-8"?><order xmlns="urn:shop:v1"><q>%s</q></order>'
        return Observation(
            "file",
            method="POST",
            path="/api/items",
            headers=[("content-type", "application/xml")],
            body=(doc % xml_escape(payload)).encode(),
        )
    if where == "mpart":
        part = f'--b0undary\r\nContent-Disposition: form-data; name="q"\r\n\r\n{payload}\r\n'
        return Observation(
            "file",
            method="POST",
            path="/api/items",
            headers=[("content-type", "multipart/form-data; boundary=b0undary")],
            body=(part + "--b0undary--\r\n").encode(),
        )
    value = "".join(c if c >= " " and c != "\x7f" else " " for c in payload)  # headers: no CTLs
    if where == "cookie":
        cookie = "sid=3f9a2c; q=" + quote(value, " !#$&'()*+,/:<=>?@[]^`{|}~")
        return Observation("file", method="GET", path="/", headers=[("cookie", cookie)])
    return Observation("file", method="GET", path="/", headers=[("user-agent", value)])


def load_payloads(root: Path) -> tuple[dict[str, list[str]], int]:
    """Unique payload lines per class, and how many blank/comment lines were skipped."""
    out: dict[str, list[str]] = {}
    skipped = 0
    for folder in sorted((root / "payloads").iterdir()):
        if not folder.is_dir() or folder.name not in CLASSES:
            continue
        seen: dict[str, None] = {}
        for f in sorted(folder.iterdir()):
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.strip() or line.startswith("# "):
                    skipped += 1
                    continue
                seen.setdefault(line, None)
        out[folder.name] = list(seen)
    return out, skipped


def load_httpparams(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    attacks: dict[str, list[str]] = {}
    norm: list[str] = []
    with (root / "httpparams" / "payload_train.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["attack_type"] == "norm":
                norm.append(row["payload"])
            else:
                attacks.setdefault(row["attack_type"], []).append(row["payload"])
    return attacks, norm


Scorer = Callable[[Observation], set[str]]  # the threat names an engine reports


def meshward(det: ThreatDetector) -> Scorer:
    return lambda obs: {t.name for t in det.inspect(obs).threats}


def rates(score: Scorer, payloads: list[str], want: str | None) -> dict[str, float]:
    """Share of payloads with a threat (of class `want`, or any) per placement; for classes in
    NOT_OF_CLASS also the share over the rows the rule keeps ("excl-*"), how many rows it set
    aside ("excluded") and how many of those were flagged with the class all the same."""
    hits = dict.fromkeys(PLACEMENTS, 0)
    anyhits = dict.fromkeys(PLACEMENTS, 0)
    kept_hits = dict.fromkeys(PLACEMENTS, 0)
    rule = NOT_OF_CLASS.get(want or "")
    excluded = flagged_anyway = 0
    for p in payloads:
        out_of_class = bool(rule and rule[1](p))
        excluded += out_of_class
        for where in PLACEMENTS:
            threats = score(place(p, where))
            anyhits[where] += bool(threats)
            hit = want in threats
            hits[where] += hit
            if out_of_class:
                flagged_anyway += hit and where == "query"
            else:
                kept_hits[where] += hit
    n = max(len(payloads), 1)
    out = {w: 100.0 * hits[w] / n for w in PLACEMENTS}
    out.update({f"any-{w}": 100.0 * anyhits[w] / n for w in PLACEMENTS})
    if rule:
        kept = max(len(payloads) - excluded, 1)
        out.update({f"excl-{w}": 100.0 * kept_hits[w] / kept for w in PLACEMENTS})
        out.update(excluded=excluded, flagged_anyway=flagged_anyway)
    return out


# A file placeholder traversal lists leave unfilled (`//{file}`, `/aaaa..{FILE}`): the row is a
# pattern for a fuzzer to fill, not a request, so its rate is also printed filled with targets.
PLACEHOLDER = re.compile(r"(?<!\{)\{file\}(?!\})", re.IGNORECASE)
FILLS = ("etc/passwd", "windows/win.ini", "proc/self/environ")


def filled_rates(det: ThreatDetector, payloads: list[str], want: str) -> str:
    """One line: how many rows hold a placeholder, and the class rate (query placement) over all
    rows with every placeholder filled by each of FILLS; empty when no row holds one."""
    held = sum(1 for p in payloads if PLACEHOLDER.search(p))
    if not held:
        return ""
    parts = []
    for fill in FILLS:
        rows = [PLACEHOLDER.sub(fill, p) for p in payloads]
        hit = sum(any(t.name == want for t in det.inspect(place(r, "query")).threats) for r in rows)
        parts.append(f"{fill} {100.0 * hit / len(rows):.1f}%")
    return (
        f"{held} of {len(payloads)} rows hold a placeholder such as {{file}}; strict rate "
        "(query) with it filled: " + ", ".join(parts)
    )


def misses(det: ThreatDetector, payloads: list[str], want: str, where: str) -> list[str]:
    return [
        p for p in payloads if not any(t.name == want for t in det.inspect(place(p, where)).threats)
    ]


def print_table(
    title: str, rows: list[tuple[str, int, dict[str, float]]], fp: bool = False
) -> None:
    print(f"\n{title}")
    heads = "".join(f"{w:>7}" for w in PLACEMENTS)
    cols = f"{heads[1:]} | any{heads}" if not fp else f"any{heads}"
    if not fp:
        cols += f" | excl: rows{heads}"
    print(f"  {'class':<16}{'n':>6} {cols}")
    notes: list[str] = []
    for name, n, r in rows:
        mark = ""
        if not fp and min(r[w] for w in PLACEMENTS) < 95.0:
            mark = "  < 95% strict"
        if fp and max(r[f"any-{w}"] for w in PLACEMENTS) > 0.5:
            mark = "  > 0.5%"
        excl = ""
        if "excluded" in r:
            excl = f" | {-int(r['excluded']):>10}" + "".join(
                f"{r['excl-' + w]:7.1f}" for w in PLACEMENTS
            )
            notes.append(
                f"{name}: {int(r['excluded'])} rows set aside as not of the class, "
                f"{int(r['flagged_anyway'])} of them flagged with it all the same "
                "(query)"
            )
        elif not fp:
            excl = " |          -" + "      -" * len(PLACEMENTS)
        strict = "" if fp else "".join(f"{r[w]:7.1f}" for w in PLACEMENTS) + " |"
        print(
            f"  {name:<16}{n:>6}"
            + strict
            + "".join(f"{r['any-' + w]:7.{2 if fp else 1}f}" for w in PLACEMENTS)
            + excl
            + mark
        )
    for note in notes:
        print(f"    {note}")


def api_false_positives(score: Scorer, n: int = 20_000) -> tuple[int, int]:
    """Normal requests of the engine's OpenAPI sample API (paths, queries, JSON bodies)."""
    from tests.support.openapi_traffic import Traffic

    traffic = Traffic(seed=3)
    return n, sum(1 for _ in range(n) if score(traffic.normal()))


def prose_lines(limit: int = 20_000) -> list[str]:
    """Comment and docstring lines of Python's standard library: free text with quotes, code
    words and punctuation, harsher than form values (a free-text field's worst case)."""
    out: list[str] = []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line.startswith("#"):
                line = line.lstrip("# ")
            elif not (line[:1].isalpha() and " " in line and not re.search(r"[=(){}\[\]]", line)):
                continue
            if 20 < len(line) < 200:
                out.append(line)
                if len(out) >= limit:
                    return out
    return out


def text_false_positives(score: Scorer, lines: list[str]) -> tuple[int, int, dict[str, int]]:
    """(lines, lines with a finding, findings by threat name), each line in a JSON field."""
    by_name: dict[str, int] = {}
    flagged = 0
    for line in lines:
        threats = score(place(line, "json"))
        flagged += bool(threats)
        for t in threats:
            by_name[t] = by_name.get(t, 0) + 1
    return len(lines), flagged, by_name


# ---- Benign free text as users type it into JSON fields (comments, chat messages, tickets,
# descriptions). Written for this bench from templates, seeded: developer chat and Markdown
# with inline code, shell-tutorial text, support tickets, product descriptions. Command names
# that are also English words (sleep, cat, id, time, kill, ...) appear as words, as commands
# in code spans, and as commands in running text, the way people write about them.
_CODE = (
    "ls -la",
    "ls",
    "cat notes.txt",
    "cat README.md",
    "git status",
    "git log --oneline",
    "kubectl get pods -n prod",
    "docker ps -a",
    "npm install",
    "pip install -r requirements.txt",
    "grep -rn TODO src/",
    "tail -f app.log",
    "sleep 5",
    "echo $PATH",
    "curl -I https://example.com",
    "make test",
    "id -u",
    "ps aux",
    "kill -9 1234",
    "find . -name '*.py'",
    "sort -u names.txt",
    "head -n 20 data.csv",
    "time make",
    "which python3",
    "chmod +x run.sh",
    "ssh deploy@build01",
    "whoami",
    "uname -a",
    "ping 8.8.8.8",
    "cd ~/projects",
    "less server.log",
    "more CHANGES",
    "wc -l *.csv",
    "du -sh .",
    "df -h",
    "env | sort",
    "export FOO=bar",
    "type python",
    "touch .env.local",
    "dig example.com",
    "nc -zv db 5432",
    "python3 -m venv .venv",
    "systemctl restart nginx",
    "journalctl -u app --since today",
    "tar xzf release.tgz",
    "sed -i 's/foo/bar/' config.yml",
    "awk '{print $2}' out.txt",
    "date +%F",
    "top -o cpu",
)
_IDENT = (
    "id",
    "user_id",
    "type",
    "time",
    "sleep()",
    "cat",
    "None",
    "true",
    "false",
    "--force",
    "$HOME",
    "config.yaml",
    "more",
    "kill",
    "head",
    "sort",
    "find()",
    "echo",
    "env",
    "net",
    "timeout",
    "ping",
    "which",
    "reg",
    "del",
    "dir",
    "ver",
    "su",
    "ps",
    "tee",
    "pwd",
)
_PURPOSE = (
    "list files",
    "check the state",
    "see what changed",
    "find the culprit",
    "clean up",
    "print the first rows",
    "wait a bit between retries",
    "get your user id",
    "stop it",
    "inspect the container",
    "see the logs",
    "find large files",
    "sort them",
)
_AFTER = (
    "and got a permission error",
    "and it hangs forever",
    "and nothing happens",
    "but it still fails",
    "and it works now, thanks!",
    "and the output looks wrong",
    "twice",
    "before the deploy",
    "on the build box",
    "from the repo root",
)
_WORDS_AFTER_SEP = (
    "sleep well",
    "sleep tight everyone",
    "cat is fine now",
    "cat food order missing",
    "time to escalate",
    "time flies",
    "more details below",
    "more to come",
    "kill the subscription please",
    "find attached the receipt",
    "find the invoice attached",
    "sort it out asap",
    "id card attached",
    "id is in the subject",
    "echo of the last ticket",
    "type of issue: billing",
    "less urgent than before",
    "head office was notified",
    "which plan am I on?",
    "net price was wrong",
    "ping me when resolved",
    "touch screen not responding",
    "export to CSV fails",
    "dig deeper please",
    "env is staging",
    "su casa es mi casa",
    "timeout after 30 seconds",
    "dir. Smith approved it",
    "type in your code again",
    "echo chamber",
    "head of support cc'd",
    "ps: thanks a lot",
    "ver 2.1 is affected",
    "del key stopped working",
    "reg number is on the card",
    "wait for the next release",
    "which is odd",
    "kill time",
    "cat videos welcome",
)
_SUBJECT = (
    "Order #{n} arrived late",
    "Can't log in since Tuesday",
    "Refund for order {n}",
    "App crashes on start",
    "Billing question",
    "Re: invoice {n}",
    "Hi team",
    "Thanks for the quick fix",
    "Update from the night shift",
    "Feature request",
)
_PRODUCTS = (
    "Cat tree (3 levels)",
    "Sleep mask",
    "Echo Dot (5th gen)",
    "Time-Turner necklace",
    "Kill Bill poster",
    "Find My tracker",
    "ID card holder",
    "Net curtains (2-pack)",
    "USB Type-C cable",
    "Director's cut Blu-ray",
    "Head torch",
    "Less Mess bib",
    "More Tea sampler",
    "Touch lamp",
    "Ping-pong set",
    "Sort-It bins",
    "Dig kit for kids",
)
_FEATURES = (
    "100% cotton",
    "machine washable",
    "soft; breathable",
    "easy assembly",
    "2-year warranty",
    'fits 27" monitors',
    "kids' size",
    "5'11\" model wears M",
    "BPA free",
    "ships in 24h",
    '"Rock & Roll" edition',
    "rated 4.8/5",
    "was $29, now $19",
    "sizes S-XL",
    "cat-safe dye",
    "sleep-friendly fabric",
    "type A & C ports",
    "set of 3 | mixed colours",
)
_TEMPLATES = (
    "Use `{code}` to {purpose}.",
    "run `{code}` first, then restart the pod",
    "I ran `{code}` {after}",
    "`{code}` {after}",
    "Try `{code}`; if that fails, ping me",
    "The `{ident}` field is required; see the docs",
    "Can you check `{ident}` in config.yaml?",
    "fyi: `{code}` needs sudo on the build box",
    "- [ ] run `{code}` on staging\n- [x] update the changelog",
    "Quick question: should `{ident}` be optional?",
    "use `{code}` or `{code2}` to {purpose}",
    "Step {k}: type `{code}` and press Enter.",
    "Hint: `{code}`",
    "> `{code}` {after}\nsame here",
    "In the shell, {code} should {purpose}.",
    "The {word} command is handy; {word} {arg} is what I use",
    "{subject}; {words}.",
    "{subject}. {Words}; thanks!",
    "Hi,\n{words}\nThanks, Ana",
    "{subject} | {words} | thanks",
    "Priority: high | Type: billing | ID: {n}",
    "Status: open; {words}",
    "{product} | {feature}; {feature2}",
    "{product}: {feature}, {feature2}. {Words}?",
    "{product} - {feature} | {feature2} | {n} in stock",
    "Good night all; {words}",
    "Deploy is done; {words}. See you tomorrow",
    "Note: {words}; more info in the wiki",
    "{Words}.",
    "{words} - {words2}",
    "| id | name | type |\n|----|------|------|\n| {n} | {product} | gift |",
    "Reminder: the `{ident}` value comes from the API",
)


def benign_text(n: int = 20_000, seed: int = 7) -> list[str]:
    """Benign user text for JSON fields (see _TEMPLATES): developer chat and Markdown with
    inline code, shell-tutorial sentences, support tickets, product descriptions."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        words = rng.choice(_WORDS_AFTER_SEP)
        code = rng.choice(_CODE)
        fill = {
            "code": code,
            "code2": rng.choice(_CODE),
            "ident": rng.choice(_IDENT),
            "purpose": rng.choice(_PURPOSE),
            "after": rng.choice(_AFTER),
            "words": words,
            "Words": words[:1].upper() + words[1:],
            "words2": rng.choice(_WORDS_AFTER_SEP),
            "subject": rng.choice(_SUBJECT).format(n=rng.randint(1000, 99999)),
            "product": rng.choice(_PRODUCTS),
            "feature": rng.choice(_FEATURES),
            "feature2": rng.choice(_FEATURES),
            "n": rng.randint(1, 99999),
            "k": rng.randint(1, 9),
            "word": code.split()[0],
            "arg": " ".join(code.split()[1:]) or "--help",
        }
        out.append(rng.choice(_TEMPLATES).format(**fill))
    return out


def typical_request() -> Observation:
    """1 KB JSON body, 10 headers, as one service calls another in a mesh."""
    body = json.dumps(
        {
            "order": {
                "id": 12345,
                "customer": {
                    "name": "Alice Smith",
                    "email": "alice@example.com",
                    "phone": "+1 555 0100",
                    "tier": "gold",
                },
                "items": [
                    {"sku": f"SKU-{i:04d}", "qty": i + 1, "price": 9.99, "title": "Blue widget M"}
                    for i in range(11)
                ],
                "shipping": {"street": "12 Harbour Road", "city": "Leith", "zip": "EH6 6LX"},
                "note": "Leave at the door please",
                "currency": "EUR",
            }
        }
    ).encode()
    headers = [
        ("host", "orders.shop.svc.cluster.local"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"),
        ("x-request-id", "7f3c9a2e-1b1d-4c1e-9a51-2b8f0f6d3c11"),
        ("cookie", "sid=3f9a2c; theme=dark"),
    ]
    return Observation(
        "file",
        method="POST",
        path="/api/v1/orders/12345",
        query="page=2&sort=desc",
        headers=headers,
        body=body,
    )


def normalise_only(obs: Observation) -> int:
    """Baseline: decode and normalise every value the detector could look at, match nothing."""
    n = len(normalise(obs.path))
    pairs, _ = parse_query(obs.query)
    for k, v in pairs:
        n += len(normalise(k)) + len(normalise(v))
    for _, v in obs.headers:
        n += len(alternate(normalise(v)))
    body = decode_body(obs.header("content-type"), obs.body)
    for _, field in body.fields:
        if isinstance(field, str):
            n += len(alternate(normalise(field)))
    return n


def baseline_detector(ref: str, level: int = 1) -> Callable[[Observation], object]:
    """`inspect` of the detector as it was at git commit `ref`, loaded into this process next to
    the current one, so that both are timed in the same run (the machine is shared and noisy).

    `meshward/` at `ref` is unpacked (git archive) into a temporary folder and imported with
    the current `meshward` modules set aside; the old objects keep their own module globals, so
    the current modules are put back afterwards and both detectors live side by side."""
    repo = Path(__file__).resolve().parents[1]
    tar = subprocess.run(
        ["git", "-C", str(repo), "archive", ref, "meshward/__init__.py", "meshward/core"],
        capture_output=True,
        check=True,
    ).stdout
    folder = tempfile.mkdtemp(prefix="meshward-baseline-")
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(folder, filter="data")
    ours = [m for m in sys.modules if m == "meshward" or m.startswith("meshward.")]
    saved = {m: sys.modules.pop(m) for m in ours}
    sys.path.insert(0, folder)
    try:
        old = importlib.import_module("meshward.core.threats").ThreatDetector(level=level)
    finally:
        sys.path.remove(folder)
        for m in [m for m in sys.modules if m == "meshward" or m.startswith("meshward.")]:
            del sys.modules[m]
        sys.modules.update(saved)
        shutil.rmtree(folder, ignore_errors=True)  # imported: the modules need no files now
    return old.inspect


def side_by_side_us(
    fns: dict[str, Callable[[], object]], number: int = 2000, rounds: int = 15
) -> dict[str, list[float]]:
    """CPU µs per call of each fn (the process's CPU time: waiting for a core on a shared
    machine is not counted), one batch of `number` calls each per round, the order rotated
    every round, so that load changes hit every fn alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            fn = fns[name]
            t0 = time.process_time()
            for _ in range(number):
                fn()
            times[name].append((time.process_time() - t0) / number * 1e6)
    return times


def compare_requests(
    payloads: dict[str, list[str]],
    attacks: dict[str, list[str]],
    norm: list[str],
) -> Iterator[Observation]:
    """The requests `--compare` inspects: every payload, httpparams attack and norm row in every
    placement, and once more in a header and the content type's neighbours of the typical
    request (so that the head is read with several headers, a body and a content type); the
    prose and benign-text lines in a JSON field and in a header; 5,000 OpenAPI requests; the
    typical request. Each is inspected twice by each detector (see compare)."""
    rows = [r for p in (*payloads.values(), *attacks.values(), norm) for r in p]
    typical = typical_request()
    for row in rows:
        for where in PLACEMENTS:
            yield place(row, where)
        header = "".join(c if c >= " " and c != "\x7f" else " " for c in row)
        yield dataclasses.replace(typical, headers=[*typical.headers, ("x-note", header)])
        yield dataclasses.replace(
            typical, headers=[("accept-language", header), *typical.headers[1:]]
        )
    for line in [*prose_lines(), *benign_text()]:
        yield place(line, "json")
        yield place(line, "header")
    from tests.support.openapi_traffic import Traffic

    traffic = Traffic(seed=9)
    for _ in range(5000):
        yield traffic.normal()
    yield typical


def compare(ref: str, level: int, requests: Iterable[Observation]) -> tuple[int, int]:
    """(inspections, inspections whose findings or `partial` differ) between the detector of
    git commit `ref` and this one at `level`. Each request is inspected twice in a row by each
    detector, so that the second read meets the header values the first found clean (the
    clean-value cache); the first differences are printed."""
    old, new = baseline_detector(ref, level), ThreatDetector(level=level).inspect
    n = differ = 0

    def seen(inspection: Any) -> tuple[object, ...]:
        return (
            tuple((t.name, t.location, t.evidence) for t in inspection.threats),
            inspection.partial,
        )

    for obs in requests:
        for _ in range(2):
            a, b = seen(old(obs)), seen(new(obs))
            n += 1
            if a != b:
                differ += 1
                if differ <= 10:
                    print(f"  differs: {obs!r:.300}\n    {ref}: {a}\n    now: {b}")
    return n, differ


def print_ratios(times: dict[str, list[float]], base: str) -> None:
    """Median and min µs per fn, and its ratio to `base`: the median over rounds of the
    per-round ratio, with the spread (min-max) over rounds."""
    for name, ts in times.items():
        line = f"    {name:<28} median {statistics.median(ts):7.2f} µs  min {min(ts):7.2f} µs"
        if name != base:
            ratios = [t / b for t, b in zip(ts, times[base], strict=True)]
            line += (
                f"  /{base}: {statistics.median(ratios):.2f} "
                f"(rounds {min(ratios):.2f}-{max(ratios):.2f})"
            )
        print(line)


def _each(fn: Callable[[Observation], object], requests: list[Observation]) -> None:
    for obs in requests:
        fn(obs)


def per_call_us(
    fn: Callable[[], object], number: int = 2000, repeat: int = 15
) -> tuple[float, float]:
    """(median, min) µs per call over `repeat` batches: the machine is shared and noisy."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number * 1e6)
    return statistics.median(times), min(times)


# Families the shared lists do not hold, written for this bench (development data, a few rows
# each; the held-out suites are not here): the technique, not a corpus quirk, is measured.
FAMILY_ROWS: dict[str, list[str]] = {
    "LDAP.Injection": [
        "*)(uid=*))(|(uid=*",
        "admin)(&)",
        "*)(|(objectclass=*)",
        "x)(|(cn=*))",
        "admin*)((|userPassword=*)",
        "*)(objectClass=*",
        "(|(mail=*)(cn=admin))",
        "jdoe)(|(password=*))",
    ],
    "Mail.Header.Injection": [
        "alice@example.com\nBcc: everyone@example.com",
        "alice@example.com\r\nCc:victim@example.com",
        "news\r\nContent-Type: text/html",
        "x\r\nRCPT TO:<victim@example.com>",
        "INBOX\r\nA1 LOGOUT",
        "a\r\nHELO evil.example\r\n",
        "me@x.example%0aBcc:b@y.example",
        "subject%0d%0aTo: all@example.com",
    ],
    "Server.Side.Include": [
        '<!--#exec cmd="id"-->',
        '<!--#include virtual="/etc/passwd"-->',
        '<!--#echo var="DOCUMENT_ROOT"-->',
        "<!--#printenv -->",
        '<!--#config errmsg="x"-->',
        '<!--#exec cgi="/cgi-bin/a.cgi"-->',
    ],
}
SCANNER_AGENTS = [
    "sqlmap/1.7.2#stable (https://sqlmap.org)",
    "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:007254)",
    "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
    "Fuzz Faster U Fool v2.1.0-dev",
    "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
    "WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)",
    "gobuster/3.6",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Nuclei",
    "commix/v3.9 (https://commixproject.com)",
    "Wfuzz/3.1.0",
]


def sample(rows: list[str], n: int, seed: int = 11) -> list[str]:
    """At most n rows, a seeded sample in the list's order (the anchor costs milliseconds)."""
    if len(rows) <= n:
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i in keep]


def _scorer(inspect: Callable[[Observation], object]) -> Scorer:
    """A Scorer of an older commit's `inspect` (see baseline_detector)."""
    return lambda obs: {t.name for t in inspect(obs).threats}  # type: ignore[attr-defined]


def side_by_side(
    root: Path,
    payloads: dict[str, list[str]],
    attacks: dict[str, list[str]],
    norm: list[str],
    rows: int,
    baselines: dict[str, Callable[[Observation], object]] | None = None,
) -> None:
    """meshward at level 1 and ModSecurity + CRS at PL1 on the same requests: detection per
    class and placement, false positives, and µs per typical request. `baselines`: older
    commits' level-1 detectors (--baseline), scored on the same requests. A list where
    meshward is below CRS in a pooled placement, strict or any, is marked "< crs in ..."."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from crs_anchor import CrsAnchor

    print("\n=== side by side: meshward level 1 | ModSecurity v3 + OWASP CRS, paranoia level 1 ===")
    try:
        anchor = CrsAnchor(root)
    except RuntimeError as exc:
        print(f"  anchor unavailable: {exc}")
        return
    print(f"  {anchor.version}; {anchor.source}: {anchor.files} rule files")
    print(
        f"  the same requests for both: each list a seeded sample of at most {rows} rows "
        "(--anchor-rows), every placement; strict: a threat of the row's class (CRS: a rule "
        "of the class by its attack-* tag, in a request it interrupts); any: flagged at all. "
        "CRS flags every body sent without a Content-Type (rules 920340/920640, benign or "
        "not), so the pooled strict and any figures leave the 'form' column out (POOLED)"
    )
    engines: list[tuple[str, Scorer]] = [
        ("meshward", meshward(ThreatDetector(level=1))),
        *((f"at {ref}"[:9], _scorer(fn)) for ref, fn in (baselines or {}).items()),
        ("crs", anchor.threats),
    ]
    heads = "".join(f"{w:>7}" for w in PLACEMENTS)
    print(f"\n  {'class':<22}{'n':>5}  {'engine':<9}strict{heads} | any")
    lists = [(CLASSES[c], p) for c, p in payloads.items()]
    lists += [(f"{c} (httpparams)", p) for c, p in sorted(attacks.items())]
    for label, rows_all in lists:
        want = CLASSES[label.split()[0]] if label.endswith("(httpparams)") else label
        picked = sample(rows_all, rows)
        got = {name: rates(score, picked, want) for name, score in engines}
        for name, r in got.items():
            strict = statistics.mean(r[w] for w in POOLED)
            anyr = statistics.mean(r[f"any-{w}"] for w in POOLED)
            below = [
                w for w in POOLED if r[w] < got["crs"][w] or r[f"any-{w}"] < got["crs"][f"any-{w}"]
            ]
            print(
                f"  {label if name == 'meshward' else '':<22}"
                f"{len(picked) if name == 'meshward' else '':>5}  {name:<9}{strict:6.1f}"
                + "".join(f"{r[w]:7.1f}" for w in PLACEMENTS)
                + f" | {anyr:5.1f}"
                + (f"  < crs in {','.join(below)}" if below and name == "meshward" else "")
            )
    print("\n  families without a shared list (rows written for the bench, FAMILY_ROWS):")
    for fam, rows_f in FAMILY_ROWS.items():
        for name, score in engines:
            r = rates(score, rows_f, fam)
            strict = statistics.mean(r[w] for w in POOLED)
            anyr = statistics.mean(r[f"any-{w}"] for w in POOLED)
            print(
                f"  {fam if name == 'meshward' else '':<22}"
                f"{len(rows_f) if name == 'meshward' else '':>5}  {name:<9}{strict:6.1f}"
                + "".join(f"{r[w]:7.1f}" for w in PLACEMENTS)
                + f" | {anyr:5.1f}"
            )
    for name, score in engines:
        hits = [score(place(ua, "header")) for ua in SCANNER_AGENTS]
        strict = sum("Scanner.UserAgent" in h for h in hits)
        print(
            f"  {'Scanner.UserAgent' if name == 'meshward' else '':<22}"
            f"{len(SCANNER_AGENTS) if name == 'meshward' else '':>5}  {name:<9}"
            f"{100.0 * strict / len(hits):6.1f}  (user-agent only) | "
            f"{100.0 * sum(map(bool, hits)) / len(hits):5.1f}"
        )
    print("\n  false positives (any finding), the same requests for both:")
    texts = [
        ("httpparams norm rows, every placement but form", sample(norm, rows * 2), None),
        ("engine OpenAPI sample traffic", None, None),
        ("English technical prose (stdlib comments), JSON field", sample(prose_lines(), rows), 0),
        ("benign user text (chat, tickets, products), JSON field", sample(benign_text(), rows), 0),
    ]
    for what, lines, _ in texts:
        cells = []
        for name, score in engines:
            if lines is None:
                n, fps = api_false_positives(score, rows * 2)
                pct = 100.0 * fps / n
            elif what.startswith("httpparams"):
                r = rates(score, lines, None)
                pct = statistics.mean(r[f"any-{w}"] for w in POOLED)
                n = len(lines)
            else:
                n, fps, _names = text_false_positives(score, lines)
                pct = 100.0 * fps / max(n, 1)
            cells.append(f"{name} {pct:5.2f}%")
        print(f"    {what} (n={n}): " + "  ".join(cells))
    obs = typical_request()
    print(f"\n  time per typical request ({len(obs.body)} B JSON body, {len(obs.headers)} headers)")
    mw_med, mw_low = per_call_us(functools.partial(engines[0][1], obs))
    crs_med, crs_low = per_call_us(functools.partial(anchor.threats, obs), number=50, repeat=9)
    print(f"    meshward level 1   median {mw_med:8.1f} µs  min {mw_low:8.1f} µs")
    print(f"    ModSecurity + CRS  median {crs_med:8.1f} µs  min {crs_low:8.1f} µs")
    print(f"    ratio (CRS / meshward, medians): {crs_med / mw_med:.0f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,2,3", help="sensitivity levels to measure")
    ap.add_argument("--show", type=int, default=0, help="print up to N misses per class (level 1)")
    ap.add_argument(
        "--show-prose",
        type=int,
        default=0,
        help="print up to N prose and benign-text false positives (first level)",
    )
    ap.add_argument(
        "--anchor-rows",
        type=int,
        default=600,
        help="rows per list for the side-by-side run with ModSecurity + CRS (0: skip it)",
    )
    ap.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="REF",
        help="also time the level-1 detector of git commit REF in this run (repeatable)",
    )
    ap.add_argument(
        "--compare",
        metavar="REF",
        help="only count the inspections whose findings differ between the detector of git "
        "commit REF and this one, at each of --levels (see compare_requests)",
    )
    ap.add_argument("--rounds", type=int, default=15, help="timing rounds")
    ap.add_argument("--time-only", action="store_true", help="only the timing")
    args = ap.parse_args()
    root = shared_data()
    if not (root / "payloads").is_dir():
        print(f"no data at {root} (set MESHWARD_SHARED)", file=sys.stderr)
        return 2
    payloads, skipped = load_payloads(root)
    attacks, norm = load_httpparams(root)
    print(f"data: {root}")
    print(
        f"payload lists: {sum(map(len, payloads.values()))} unique payloads, "
        f"{skipped} blank/comment lines skipped; httpparams: "
        f"{sum(map(len, attacks.values()))} attack rows, {len(norm)} norm rows"
    )
    print(
        "strict: a threat of the row's class; any: any threat; excl: strict, over the rows "
        "left once these rules set aside rows that cannot be of the class:"
    )
    for cls, (rule, _) in NOT_OF_CLASS.items():
        print(f"  {cls}: {rule}")
    if args.compare:
        for level in [int(x) for x in args.levels.split(",")]:
            n, differ = compare(args.compare, level, compare_requests(payloads, attacks, norm))
            print(f"level {level}: {differ} of {n:,} inspections differ from {args.compare}")
        return 0
    for level in [] if args.time_only else [int(x) for x in args.levels.split(",")]:
        det = ThreatDetector(level=level)
        print(f"\n=== level {level} ===")
        score = meshward(det)
        print_table(
            "payloads/* detection % (threat of the class | any threat)",
            [(CLASSES[c], len(p), rates(score, p, CLASSES[c])) for c, p in payloads.items()],
        )
        print_table(
            "httpparams attack rows detection % (threat of the class | any threat)",
            [
                (f"{c} ({CLASSES[c][:10]})", len(p), rates(meshward(det), p, CLASSES[c]))
                for c, p in sorted(attacks.items())
            ],
        )
        for source, lists in (("payloads", payloads), ("httpparams", attacks)):
            for c, p in sorted(lists.items()):
                if CLASSES[c] == "Path.Traversal" and (line := filled_rates(det, p, CLASSES[c])):
                    print(f"    {source} {c}: {line}")
        print_table(
            "httpparams norm rows false positives % (any threat)",
            [("norm", len(norm), rates(meshward(det), norm, None))],
            fp=True,
        )
        n, fps = api_false_positives(meshward(det))
        print(
            f"\nengine OpenAPI sample traffic (tests/engine): {fps} of {n} normal requests "
            f"with a threat ({100.0 * fps / n:.2f}%)"
        )
        for what, lines in (
            ("English technical prose (stdlib comments)", prose_lines()),
            ("benign user text (chat/Markdown, tutorials, tickets, products)", benign_text()),
        ):
            n, flagged, by_name = text_false_positives(meshward(det), lines)
            names = sorted(by_name.items(), key=lambda kv: -kv[1])
            print(
                f"{what} in a JSON field: {flagged} of {n} lines with a finding "
                f"({100.0 * flagged / max(n, 1):.2f}%): " + ", ".join(f"{k} {v}" for k, v in names)
            )
        if args.show_prose:
            for line in [*prose_lines(), *benign_text()]:
                found = det.inspect(place(line, "json")).threats
                if found and args.show_prose > 0:
                    args.show_prose -= 1
                    print(
                        f"  prose fp: {line[:100]!r} -> "
                        + ", ".join(f"{t.name} {t.evidence[:40]!r}" for t in found)
                    )
        if args.show and level == 1:
            for c, p in [*payloads.items(), *attacks.items()]:
                for where in PLACEMENTS:
                    missed = misses(det, p, CLASSES[c], where)
                    for m in missed[: args.show]:
                        print(f"  miss {c}/{where}: {m[:150]!r}")
            for text in norm:
                for where in PLACEMENTS:
                    found = det.inspect(place(text, where)).threats
                    if found:
                        print(
                            f"  fp {where}: {text[:80]!r} -> {found[0].name} {found[0].evidence!r}"
                        )
    obs = typical_request()
    det = ThreatDetector(level=1)
    assert not det.inspect(obs).threats, "typical request must be clean"
    from tests.support.openapi_traffic import Traffic

    traffic = Traffic(seed=5)
    mix = [traffic.normal() for _ in range(500)]
    current = {level: ThreatDetector(level=level).inspect for level in (1, 2, 3)}
    old = {ref: baseline_detector(ref) for ref in args.baseline}
    base = f"level 1 at {args.baseline[0]}" if args.baseline else "normalisation only"
    print(
        f"\n=== time per request, one core, {args.rounds} rounds in rotation "
        "(ratio: the median of the per-round ratios, and their spread) ==="
    )
    for title, requests in (
        (f"typical request ({len(obs.body)} B JSON body, {len(obs.headers)} headers)", [obs]),
        (f"OpenAPI sample traffic ({len(mix)} distinct requests, µs per request)", mix),
    ):
        fns: dict[str, Callable[[], object]] = {
            f"level {level}": functools.partial(_each, fn, requests)
            for level, fn in current.items()
        }
        fns.update(
            {f"level 1 at {ref}": functools.partial(_each, fn, requests) for ref, fn in old.items()}
        )
        if len(requests) == 1:
            fns["normalisation only"] = functools.partial(normalise_only, obs)
        number = max(1, 2000 // len(requests))
        times = side_by_side_us(fns, number=number, rounds=args.rounds)
        print(f"  {title}")
        per_request = {k: [t / len(requests) for t in v] for k, v in times.items()}
        print_ratios(per_request, base if base in times else "level 1")
    if args.anchor_rows and not args.time_only:
        side_by_side(root, payloads, attacks, norm, args.anchor_rows, old)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
