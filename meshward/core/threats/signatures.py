"""The signature table and its Hyperscan databases (compiled once per level).

Signatures are written against normalised text (decoded, lower-case, see normalise.py) and are
compiled caseless so the same set also works as a pre-filter on raw bytes. Each belongs to one
threat name and one sensitivity level (1..3, like OWASP CRS paranoia levels): a detector at level
N uses every signature of level <= N.

Patterns use only what Hyperscan and Python `re` share (no look-around, no back-references),
and every repeat is bounded, so matching is linear in the input.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import hyperscan

from meshward.core.threats.names import (
    CMDI,
    CRLF,
    JAVA,
    JNDI,
    LDAP_INJECTION,
    MAIL_HEADER_INJECTION,
    NOSQL,
    PHP,
    RFI,
    SERVER_SIDE_INCLUDE,
    SQLI,
    SSRF,
    SSTI,
    TRAVERSAL,
    XSS,
    XXE,
)
from meshward.core.threats.normalise import (
    COMMENT_INDICATOR,
    PATH_INDICATOR,
    SPLIT_WORD_INDICATOR,
    WINDOWS_ESCAPE_INDICATOR,
)

# Shell commands an injected command typically starts with (after a metacharacter). The ones
# that are also English words (or read as words in tickets and chat: "; sleep well", "| id |",
# "; type of issue") are WORD_COMMANDS; after a separator they count only with a shell-shaped
# tail (see _word_command). Names with a bin/ path in front are commands whatever the name.
NAME_COMMANDS = (
    "whoami",
    "uname",
    "ls",
    "nc",
    "ncat",
    "netcat",
    "curl",
    "wget",
    "bash",
    "sh",
    "zsh",
    "ksh",
    "dash",
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "php",
    "nslookup",
    "ifconfig",
    "ipconfig",
    "netstat",
    "systeminfo",
    "sysinfo",
    "rm",
    "chmod",
    "chown",
    "telnet",
    "tftp",
    "ftp",
    "powershell",
    "pwsh",
    "cmd",
    "certutil",
    "bitsadmin",
    "tasklist",
    "xterm",
    "awk",
    "sed",
    "base64",
    "xxd",
    "pwd",
    "netsh",
    "wmic",
    "hostname",
    "whereis",
    "mkfifo",
    "socat",
    "ssh",
    "scp",
    "uptime",
    "sudo",
    "useradd",
    "grep",
    "nohup",
    "crontab",
    "passwd",
)
WORD_COMMANDS = (
    "id",
    "cat",
    "ping",
    "dig",
    "sleep",
    "echo",
    "ps",
    "ver",
    "timeout",
    "dir",
    "net",
    "reg",
    "which",
    "tar",
    "su",
    "shutdown",
    "reboot",
    "kill",
    "touch",
    "export",
    "env",
    "type",
    "del",
)
COMMAND_NAMES = frozenset(NAME_COMMANDS + WORD_COMMANDS)
_BIN = r"(?:/?(?:usr/)?(?:local/)?s?bin/)"
_NAMES = "(?:" + "|".join(sorted(NAME_COMMANDS, key=lambda c: (-len(c), c))) + ")"
_WORDS = "(?:" + "|".join(sorted(WORD_COMMANDS, key=lambda c: (-len(c), c))) + ")"
_COMMANDS = "(?:" + _BIN + "?(?:" + _NAMES[3:-1] + "|" + _WORDS[3:-1] + "))"
# Recon and shell commands that are not ordinary words: a value starting with one, with
# arguments, is a command line.
_STRONG_COMMANDS = (
    r"(?:ls|cat|uname|whoami|ifconfig|ipconfig|netstat|nc|ncat|netcat|wget|curl|bash|zsh|ksh|"
    r"python[23]?|perl|ruby|nslookup|ping|systeminfo|sysinfo|netsh|powershell|pwsh|certutil|"
    r"bitsadmin|tasklist|wmic|chmod|chown|telnet|tftp|nohup|crontab|xterm|mkfifo|socat|id|"
    r"getent|lsof|sleep|pwd)"
)
# ... less its WORD_COMMANDS (cat, ping, id, sleep), for use after a separator
_STRONG_NAMES = (
    r"(?:ls|uname|whoami|ifconfig|ipconfig|netstat|nc|ncat|netcat|wget|curl|bash|zsh|ksh|"
    r"python[23]?|perl|ruby|nslookup|systeminfo|sysinfo|netsh|powershell|pwsh|certutil|"
    r"bitsadmin|tasklist|wmic|chmod|chown|telnet|tftp|nohup|crontab|xterm|mkfifo|socat|"
    r"getent|lsof|pwd)"
)
_BARE_COMMANDS = r"(?:whoami|ifconfig|ipconfig|netstat|systeminfo|sysinfo|tasklist|uname|wmic)"
_CMD_END = r"(?:$|[\s;&|`)<>'\"]|\\[`'\"]|\$\{?ifs)"  # \`: an escaped backtick
# What may follow a command that is also a word (WORD_COMMANDS) after a separator: the end of
# the value or of the clause (another metacharacter, a quote; not a possessive 's), or
# arguments up to the end of the clause where at least one is shaped like a shell argument
# (a flag, a number, a path or file name, a variable, a quoted string, NAME=value, a drive)
# and no two plain words follow each other (that is English: "; sleep well", "; cat is fine
# now", "; cat README.md is what I use"). After 6 arguments, another shell-shaped one is
# enough. (Unbounded repeats
# here: tokens are separated by whitespace they cannot contain, so Python's re stays linear.)
_ARG = (
    r"(?:(?:-{1,2}[a-z0-9]|[\d/\\~$%'\"`*?{<>@.]|[a-z]:[/\\]|[\w-]{1,64}[.:/\\=@][\w~/\\$*%.-])"
    r"[^\s;&|`<>]*|\"[^\"\n]*\"[^\s;&|`<>]*|'[^'\n]*'[^\s;&|`<>]*)"
)
_PLAIN = r"[a-z][a-z0-9_-]*"
_CLAUSE_END = r"\s{0,10}(?:$|[;&|`)<>#\r\n\x1f])"  # \x1f: the end of a code span in prose
_TYPED_ARGS = (
    r"(?:\s{1,10}" + _ARG + r"(?:\s{1,10}" + _PLAIN + r")?){1,6}"
    r"(?:" + _CLAUSE_END + r"|\s{1,10}" + _ARG + ")"
)
_ARGS = r"(?:\s{1,10}" + _PLAIN + r")?" + _TYPED_ARGS  # a subcommand or host may come first
# Commands that do something with no operand (id, env, dir, ...) also count alone, at the end
# of the value or before another metacharacter; the others (cat, sleep, ping, kill, ...) do
# nothing without one ("Dog & Cat", "Good night; sleep").
WORD_COMMANDS_ALONE = frozenset(
    ("id", "ps", "ver", "dir", "su", "shutdown", "reboot", "export", "env")
)
# Commands whose operand is a plain word (a text to print, a command, user or subcommand name,
# ps options): one plain word ending the clause is enough ("; echo pwned", "; ps aux",
# "; which nc"); for the others it must be shaped like what they take (a number, host, file).
WORD_COMMANDS_WORDY = frozenset(("echo", "which", "su", "id", "ps", "net", "reg", "export"))
# Commands whose first operand is a number, a signal or job, or a switch, never a plain word
# ("; sleep 5", "; timeout /t 5", "; kill -9 1"): "; timeout after 30 seconds" is English.
WORD_COMMANDS_TYPED = frozenset(("sleep", "timeout", "kill"))
_INTO_ARGS = r"[<`\"]|'(?:[^s]|s[\w'\"$`/])|\\[`'\"]|\$\{?ifs"  # no space: quote, redirect, $IFS


def _alternation(words: list[str]) -> str:
    return "(?:" + "|".join(sorted(words, key=lambda c: (-len(c), c))) + ")"


def _word_command(words: tuple[str, ...]) -> str:
    """A regex for these WORD_COMMANDS with what may follow them (see above)."""
    alone = [w for w in words if w in WORD_COMMANDS_ALONE]
    operand = [w for w in words if w not in WORD_COMMANDS_ALONE | WORD_COMMANDS_TYPED]
    typed = [w for w in words if w in WORD_COMMANDS_TYPED]
    wordy = [w for w in words if w in WORD_COMMANDS_WORDY]
    out = [
        _alternation(alone)
        + r"(?:$|[;&|)>]|"
        + _INTO_ARGS
        + r"|\s{1,10}(?:$|[;&`)<>#])|"
        + _ARGS
        + ")",
        _alternation(operand) + "(?:" + _INTO_ARGS + "|" + _ARGS + ")",
        _alternation(typed) + "(?:" + _INTO_ARGS + "|" + _TYPED_ARGS + ")",
    ]
    if wordy:
        out.append(_alternation(wordy) + r"\s{1,10}" + _PLAIN + _CLAUSE_END)
    return "(?:" + "|".join(a for a in out if not a.startswith("(?:)")) + ")"


_WORD_COMMAND = _word_command(WORD_COMMANDS)
# A command after a shell separator: a name that is no English word, any name after bin/, or
# a word command as above.
_SEP_COMMAND = (
    "(?:"
    + _BIN
    + "?"
    + _NAMES
    + _CMD_END
    + "|"
    + _BIN
    + _WORDS
    + _CMD_END
    + "|"
    + _WORD_COMMAND
    + ")"
)
# Tools a recon probe looks for (`which curl`) before a download, reverse shell or compile step.
_TOOLS = (
    r"(?:curl|wget|nc|ncat|netcat|socat|telnet|nmap|perl|python[23]?|ruby|php|gcc|cc|bash|sh|"
    r"zsh|ksh|busybox|tftp|base64|xxd|openssl|powershell|pwsh)"
)
# PowerShell cmdlets that read files, run commands or fetch payloads
_CMDLETS = (
    r"(?:invoke-(?:expression|webrequest|restmethod|command|wmimethod)|get-(?:childitem|content|"
    r"process|wmiobject|ciminstance|localuser|acl)|start-process|set-content|add-content|"
    r"remove-item|new-object|out-file|set-executionpolicy)"
)
_NOSQL_OPS = (
    r"(?:ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|or|and|not|nor|expr|elemmatch|"
    r"function|accumulator|eval|type|size|all|mod|text|jsonschema|lookup|comment)"
)
_METADATA_HOSTS = (
    r"(?:metadata\.google\.internal|metadata\.goog|metadata\.azure\.com|instance-data"
    r"(?:\.ec2\.internal)?|metadata\.tencentyun\.com|metadata\.oraclecloud\.com)"
)


@dataclass(frozen=True, slots=True)
class Signature:
    name: str  # threat name
    level: int  # 1..3
    pattern: str  # regex over normalised (lower-case) text
    # False: left out of the `lines` pre-filter, where newlines separate values (head parts,
    # query parameters, JSON strings) and would look like injected command separators.
    in_lines_prefilter: bool = True
    # What the pre-filter databases match instead of `pattern`: a broader, cheaper regex that
    # matches wherever `pattern` does (tests check it); "" for `pattern` itself. Worth it for a
    # pattern anchored at line starts or with long bounded repeats, which Hyperscan runs at
    # every JSON string of a body.
    prefilter: str = ""


S = Signature
SIGNATURES: tuple[Signature, ...] = (
    # --- SQL injection (libinjection adds tokenised detection on top, see injection.py)
    # Functions an injection calls to sleep, fail or read: those that take arguments only with
    # one (prose names them bare: "sleep()", "exp(z)"); exp() by its overflow argument (~, a
    # subquery), as ordinary maths calls it on variables.
    S(SQLI, 1, r"\bunion\s{1,20}(?:all\s{1,20}|distinct\s{1,20})?\(?\s{0,20}select\b"),
    S(
        SQLI,
        1,
        r"\b(?:sleep|benchmark|pg_sleep|randomblob|load_file|extractvalue|updatexml|"
        r"group_concat|make_set|regexp_substring|generate_series|current_setting|"
        r"pg_read_file|dbms_pipe\.receive_message|dbms_lock\.sleep|dbms_utility\.\w{1,40}|"
        r"utl_inaddr\.\w{1,40}|utl_http\.\w{1,40}|ctxsys\.\w{1,40}|sys\.fn_\w{1,40}|"
        r"xp_cmdshell|sp_executesql|sp_password|json_keys|geometrycollection|multipoint|"
        r"polygon|linestring|name_const|get_lock|pg_sleep_for|dblink_connect|lo_import)"
        r"\s{0,20}\(\s{0,20}[^)\s]|\b(?:row_count|found_rows|sqlite_version)\s{0,20}\(|"
        r"\bexp\s{0,20}\(\s{0,20}(?:[~(@]|select\b)",
    ),
    S(SQLI, 1, r"\bwaitfor\s{1,20}(?:delay|time)\b"),
    S(
        SQLI,
        1,
        r";\s{0,20}(?:select\s|insert\s{1,20}into|update\s{1,20}\w{1,64}\s{1,20}set|"
        r"delete\s{1,20}from|drop\s{1,20}(?:table|database|function|procedure|user|view)|"
        r"create\s{1,20}(?:table|user|function|database)|alter\s{1,20}table|"
        r"exec(?:ute)?\s|declare\s{1,20}@|shutdown\b|truncate\s{1,20}table|waitfor\b|"
        r"begin\s|copy\s{1,20}\w{1,64}\s{1,20}(?:to|from)\b|if\s{0,20}\(|"
        r"select\(|call\s{1,20}\w)",
    ),
    S(
        SQLI,
        1,
        r"['\"`]\s{0,20}\){0,5}\s{0,20}(?:\b(?:or|and|xor)\b|\|\||&&)[^\n]{0,40}?"
        r"(?:=|<|>|\blike\b|\bin\s{0,5}\(|\bbetween\b|--|#|/\*|;|\bsleep\b|\bbenchmark\b|"
        r"\bselect\b|\btrue\b|\bnull\b)",
    ),
    S(
        SQLI,
        1,
        r"['\"`]\s{0,20}\){0,5}\s{0,20}(?:--(?:\s|$)|#(?:\s|$)|/\*|;\s{0,20}(?:$|--|#|"
        r"\w{1,30}\s{0,5}\())|['\"`]\s{0,20}\){0,5}\s{0,20}\b(?:rlike|regexp|procedure|"
        r"sounds\s{1,5}like|collate|div)\b",
    ),
    S(
        SQLI,
        2,
        r"['\"`]\s{0,20}\){0,5}\s{0,20}(?:\b(?:or|and|xor|union|having|where|procedure|"
        r"limit|rlike|regexp|div|is|not|in|between|sounds|collate|order|group|into)\b|"
        r"\|\||&&|;|--|#|/\*)",
    ),
    S(SQLI, 1, r"['\"]\s{0,20}[=<>]\s{0,20}['\"]"),
    # A whole value that closes the string, applies an operator and opens a new one ('-', "&",
    # '^'): the application's query becomes name=''-'' (0, true for every non-numeric name)
    S(SQLI, 1, r"^\s{0,5}(?:'\s{0,5}[-+*/%&|^]\s{0,5}'|\"\s{0,5}[-+*/%&|^]\s{0,5}\")\s{0,5}$"),
    S(
        SQLI,
        1,
        r"\b(?:or|and|xor|having|where|when)\s{1,20}\(?\s{0,20}(?:\d{1,20}|'[^'\n]{0,40}'|"
        r"\"[^\"\n]{0,40}\")\s{0,20}(?:=|<|>|!=|<>|\blike\b|\bis\b|\bbetween\b|\brlike\b|"
        r"\bin\s{0,5}\()",
    ),
    S(
        SQLI,
        1,
        r"\b(?:or|and|xor|having|where)\s{1,20}\(?\s{0,20}[a-z_][\w.@-]{0,40}\s{0,20}"
        r"(?:=|!=|<>|\blike\b|\brlike\b)\s{0,20}[\w'\"(@]",
    ),
    S(
        SQLI,
        1,
        r"\b(?:or|and|xor)\s{1,20}(?:not\s{1,20})?\(?\s{0,20}(?:sleep|benchmark|exists|"
        r"ascii|substring|elt|updatexml|extractvalue)\s{0,5}\(|\b(?:or|and|xor)\s{1,20}"
        r"(?:not\s{1,20})?(?:true|false|null|\d{1,20})\s{0,5}(?:--|#|/\*|;|\)|[=<>!]|"
        r"\b(?:and|or|is|like|between)\b)",
    ),
    # Tautologies with C-style operators (1 || 1=1) and a whole value that is a number or
    # quoted string then or/and a boolean literal (1 or true, 1' and false--)
    S(
        SQLI,
        1,
        r"(?:\|\||&&)\s{0,20}\(?\s{0,20}\d{1,20}\s{0,20}"
        r"(?:=|<|>|!=|<>|\bis\b|\blike\b)\s{0,20}\(?\s{0,20}(?:\d|'|\"|null\b|not\b)|"
        r"^\s{0,10}-?\w{0,20}['\"]?\s{0,5}\)?\s{1,20}(?:or|and|xor|\|\||&&)\s{1,20}"
        r"(?:not\s{1,20})?(?:true|false)\s{0,5}(?:$|--|#|/\*|;|\))",
    ),
    S(
        SQLI,
        1,
        r"\b(?:order|group)\s{1,20}by\s{1,20}(?:\d|if\b|case\b|sleep\b|\(|\w{1,40}\s{0,5}"
        r"(?:--|#|/\*|;|asc\b|desc\b))",
    ),
    S(SQLI, 1, r"\bhaving\s{1,20}\d"),
    S(
        SQLI,
        1,
        r"@@(?:version|datadir|hostname|basedir|servername|identity|spid|tmpdir|"
        r"innodb\w{0,30})\b",
    ),
    S(
        SQLI,
        1,
        r"\b(?:information_schema|sysobjects|syscolumns|pg_catalog|pg_shadow|"
        r"mysql\.user|sqlite_master|all_tables|user_tables|dba_users|all_users|"
        r"msysobjects|sys\.(?:tables|objects|columns|databases))\b",
    ),
    S(
        SQLI,
        1,
        r"\binto\s{1,20}(?:out|dump)file\b|\bload\s{1,20}data\s{1,20}(?:local\s{1,20})?"
        r"infile\b",
    ),
    S(SQLI, 1, r"\bexec(?:ute)?\s{1,20}(?:master\.|xp_|sp_)"),
    S(SQLI, 1, r"/\*!\d{0,6}\s{0,5}\w"),
    S(
        SQLI,
        1,
        r"\bselect\s{1,20}(?:\*|@@|null\b|count\s{0,5}\(|concat|char\s{0,5}\(|version|"
        r"user\s{0,5}\(|database\s{0,5}\(|current_|case\s|if\s{0,5}\(|sleep|"
        r"benchmark|\d{1,20}\s{0,20}(?:,|from\b|$|--|#|;|\))|\(select|"
        r"\w{1,64}\s{1,20}from\s{1,20}\w{1,64}\s{1,20}where\b)",
    ),
    S(SQLI, 1, r"(?:char|chr)\s{0,5}\(\s{0,5}\d{1,3}\s{0,5}\)\s{0,5}(?:\+|\|\||,)"),
    S(SQLI, 1, r"\bcase\s{1,20}when\b[^\n]{0,100}\bthen\b"),
    S(
        SQLI,
        1,
        r"\b(?:iif|if|elt|ifnull|nullif|decode)\s{0,5}\(\s{0,5}\d{1,20}\s{0,5}[=<>]\s{0,5}"
        r"\d{1,20}\s{0,5},|\(\s{0,5}\d{1,20}\s{0,5}[=<>]\s{0,5}\d{1,20}\s{0,5}\)\s{0,5}"
        r"(?:[*+/-]|\band\b|\bor\b)",
    ),
    S(
        SQLI,
        1,
        r"^\s{0,10}(?:select\s{1,20}[\w@.()]{1,64}\s{0,5}(?:;|$)|create\s{1,20}table\s{1,20}"
        r"\w{1,64}\s{0,5}\(|insert\s{1,20}into\s{1,20}\w{1,64}|drop\s{1,20}table\s{1,20}\w|"
        r"delete\s{1,20}from\s{1,20}\w|update\s{1,20}\w{1,64}\s{1,20}set\s{1,20}\w)",
    ),
    S(SQLI, 1, r"\bcopy\s{1,20}\w{1,64}\s{1,20}(?:to|from)\s{1,20}'"),
    S(
        SQLI,
        1,
        r"\b(?:select\s{1,20}(?:version|current_setting|current_user|user|pg_\w{1,30})"
        r"\s{0,5}\(|select\s{1,20}\*\s{1,20}from)",
    ),
    S(SQLI, 2, r"\bselect\s[^\n]{1,100}\sfrom\s"),
    S(
        SQLI,
        2,
        r"\b(?:char|chr|concat|ascii|substring|substr|mid|hex|unhex|version|database|"
        r"schema|convert|cast|ord|bin|elt|field|if|ifnull|coalesce)\s{0,5}\(",
    ),
    S(SQLI, 2, r"['\"`]\s{0,5}(?:\+|\|\||&)\s{0,5}['\"(]"),
    S(SQLI, 3, r"['\"`]\s{0,20}$|^\s{0,20}['\"`]"),
    # --- Cross-site scripting (libinjection's HTML5 tokeniser adds to these)
    S(
        XSS,
        1,
        r"<\s{0,5}/?\s{0,5}(?:script|iframe|frame|frameset|object|embed|applet|svg|math|"
        r"base|meta|link|style|xml|import|isindex|marquee|bgsound|layer|ilayer|plaintext|"
        r"xmp|noscript|template|portal|xss|vmlframe|video|audio|keygen|details|dialog)\b",
    ),
    S(XSS, 1, r"<[a-z!/?][^>]{0,200}[\s/\"'`]on[a-z]{3,30}\s{0,10}="),
    S(XSS, 1, r"[\"'`;][\s/]{0,10}on[a-z]{3,30}\s{0,10}="),
    S(
        XSS,
        1,
        r"[\s/]on(?:error|load|focus|focusin|blur|click|dblclick|mouse[a-z]{2,8}|"
        r"key[a-z]{2,5}|submit|change|input|toggle|begin|end|start|finish|"
        r"animation[a-z]{3,9}|transition[a-z]{3,9}|pageshow|hashchange|message|scroll|"
        r"wheel|drag[a-z]{0,5}|drop|copy|cut|paste|pointer[a-z]{2,8}|touch[a-z]{2,8}|"
        r"resize|unload|beforeunload|readystatechange|show|select|search|invalid|play|"
        r"pause|ended|loadstart|loadeddata|canplay|auxclick|contextmenu|popstate|"
        r"afterprint|beforeprint|formdata)\s{0,10}=\s{0,10}[^\s]",
    ),
    S(
        XSS,
        1,
        r"(?:java|vb|live)\s{0,5}script\s{0,5}:|\bmocha\s{0,5}:|"
        r"j\s{0,3}a\s{0,3}v\s{0,3}a\s{0,3}s\s{0,3}c\s{0,3}r\s{0,3}i\s{0,3}p\s{0,3}t\s{0,3}:",
    ),
    S(
        XSS,
        1,
        r"\bdata\s{0,5}:\s{0,5}(?:text/html|image/svg|application/(?:x-)?javascript|"
        r"text/javascript)",
    ),
    S(XSS, 1, r"(?:alert|prompt|confirm|fromcharcode)\s{0,5}(?:\(|`)|\((?:alert|prompt|confirm)\)"),
    S(XSS, 2, r"\b(?:eval|settimeout|setinterval|atob|import)\s{0,5}(?:\(|`)"),
    S(
        XSS,
        1,
        r"document\s{0,5}\.\s{0,5}(?:cookie|domain|write|location|body|"
        r"getelementby\w{2,10}|createelement)|\bwindow\s{0,5}\.\s{0,5}(?:location|open|"
        r"name)|\.innerhtml\s{0,5}=|\bexpression\s{0,5}\(|-moz-binding|"
        r"\bbehavior\s{0,5}:\s{0,5}url\s{0,5}\(|"
        r"\bsrcdoc\s{0,5}=|\bformaction\s{0,5}=|\bxlink:href|@import\b|\+ad[w4]-",
    ),
    S(
        XSS,
        2,
        r"<[a-z][a-z0-9]{0,15}[\s/][^>]{0,200}(?:src|href|style|background|lowsrc|"
        r"dynsrc|action|data)\s{0,5}=",
    ),
    S(XSS, 3, r"<[a-z/!?]"),
    # --- Path traversal, local file inclusion, sensitive files
    S(TRAVERSAL, 1, r"(?:\.|0x2e){2}(?:[/\\]|0x2f|0x5c)"),
    S(TRAVERSAL, 1, r"(?:^|[/\\]|0x2f|0x5c)(?:\.|0x2e){2}(?:$|[^\w\s.,!?)'\"])|0x2e0x2e"),
    S(
        TRAVERSAL,
        1,
        r"/etc/(?:passwd|shadow|group|hosts|issue|motd|crontab|sudoers|"
        r"master\.passwd|security|ssh|apache2?|httpd|nginx|mysql|fstab|profile|"
        r"environment|resolv\.conf|hostname|inittab|network|php|gshadow|krb5\.keytab|"
        r"ld\.so\.preload|smbpasswd|(?:os|lsb|redhat|centos|system)-release|debian_version|"
        r"machine-id|mtab|exports|pam\.d|cron\.(?:d|allow|deny|hourly|daily)|anacrontab)",
    ),
    S(
        TRAVERSAL,
        1,
        r"/proc/(?:self|\d{1,10}|thread-self)/(?:environ|cmdline|fd|maps|mem|"
        r"status|cwd|root|exe|mounts|net)|/proc/(?:version|cpuinfo|meminfo)\b",
    ),
    # The rest of procfs and sysfs that tells about the host (network tables, kernel symbols,
    # devices, cgroups), and data directories of databases and of the container runtime
    S(
        TRAVERSAL,
        1,
        r"/proc/(?:net/(?:tcp6?|udp6?|arp|route|fib_trie|unix|dev|if_inet6)|kallsyms|"
        r"modules|mounts|partitions|sched_debug|kcore|config\.gz|cmdline|self/|"
        r"sys/(?:kernel|net)/|\d{1,10}/(?:fd|task|ns|attr)/)|"
        r"(?:^|[\s'\"=:;|&(,]|\.\./?|[/\\]\.?[/\\])/?sys/(?:class|kernel|devices|block|bus|firmware|"
        r"fs/cgroup|module|power)/|"
        r"/var/lib/(?:mysql|postgresql|docker|kubelet|containerd|etcd)/|"
        r"/var/spool/cron\b|/root/\.[a-z]",
    ),
    # A value that is an absolute path into the system's configuration (/etc/<anything>): what
    # a file parameter is pointed at to read the host; and every per-process and host-wide
    # procfs file by name, anywhere (a route may start with /proc/, for procurement)
    S(
        TRAVERSAL,
        1,
        r"^[\s'\"]{0,5}/etc/[a-z0-9_]|"
        r"/proc/(?:self|thread-self|\d{1,10})/[a-z_]{2,20}|/proc/(?:keys|key-users|kmsg|"
        r"iomem|ioports|interrupts|devices|filesystems|crypto|diskstats|swaps|stat|uptime|"
        r"loadavg|vmstat|zoneinfo|slabinfo|timer_list|sysrq-trigger|buddyinfo|cgroups|locks|"
        r"consoles|pagetypeinfo|schedstat|softirqs|vmallocinfo|version_signature|mdstat|"
        r"kpage(?:cgroup|count|flags)|(?:sys|driver|bus|irq|tty|scsi|fs|acpi|sysvipc)/)\b",
    ),
    S(
        TRAVERSAL,
        1,
        r"(?:boot|win|system)\.ini\b|global\.asa\b|\bweb-inf|"
        r"\bwin(?:dows|nt)[/\\]system32\b|\bweb\.config\b|\.ht(?:access|passwd)\b|"
        r"[/\\]\.ssh[/\\]|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|\.bash_history\b|"
        r"[/\\]\.git[/\\]|[/\\]\.env\b|\brepair[/\\]sam\b|\bsystem32[/\\]config\b|"
        r"\bautoexec\.bat\b|/var/log/|/var/run/secrets/|\b[a-z]:[/\\](?:windows|winnt|"
        r"inetpub|boot)|\b(?:windows|winnt)[/\\](?:repair|panther|debug|syswow64)[/\\]|"
        r"\b(?:unattend(?:ed)?\.xml|sysprep\.inf)\b",
    ),
    # Credentials and keys of cloud, cluster and developer tools, in a home or config directory:
    # a request has no reason to name them
    S(
        TRAVERSAL,
        1,
        r"(?:^|[/\\~])\.(?:aws[/\\](?:credentials|config)|kube[/\\]config|"
        r"docker[/\\]config\.json|config[/\\]gcloud[/\\]|azure[/\\](?:accesstokens|"
        r"azureprofile)|git-credentials)\b|"
        r"/etc/(?:ssl/private|pki/tls/private|kubernetes/(?:pki|admin\.conf|"
        r"kubelet\.conf|controller-manager\.conf|scheduler\.conf))\b|"
        r"\btomcat-users\.xml\b",
    ),
    # Files that hold secrets or history, after a path separator or ~ (requested by URL path or
    # named in a value): shell and client history files, cloud and mail client credentials,
    # version-control metadata a deploy left behind, password stores, WordPress's configuration
    S(
        TRAVERSAL,
        1,
        r"(?:^|[/\\~])\.(?:[a-z]{1,12}_history|s3cfg|boto|htdigest|msmtprc|rhosts|"
        r"lighttpdpassword|google_authenticator|deployment-secrets\.txt|remote-sync\.json|"
        r"ftpconfig|ds_store|(?:svn|hg|gnupg|password-store)[/\\])|\bwp-config\.php\b|"
        r"\binitial_root_password\b",
    ),
    # Server configuration files by path, and the password files of developer tools: their
    # documentation names them often (~/.netrc), so only from level 2
    S(
        TRAVERSAL,
        2,
        r"[/\\](?:httpd|apache2|nginx|lighttpd|php-fpm|my|php)\.(?:conf|cnf|ini)\b|"
        r"(?:^|[/\\~])\.(?:netrc|pgpass|my\.cnf|npmrc|pypirc)\b",
    ),
    # file URIs: file:///etc/x, file:/etc/x (RFC 8089 short form), file:c:/x, file:/c:x
    S(TRAVERSAL, 1, r"\bfile\s{0,5}:\s{0,5}/{2,3}|\bfile:(?:/[^/\s]|[a-z]:[/\\])"),
    # Backslash-escaped parent step (\.\.\/ or .\./): what a backend that unescapes sees as ../
    S(TRAVERSAL, 1, r"\.\\\.\\?/"),
    S(TRAVERSAL, 1, r"(?:^|[/\\.])etc[/\\]{0,2}(?:passwd|shadow)\b|(?:^|[/\\])\.{4,}"),
    S(TRAVERSAL, 2, r"\.{3,}[/\\]|(?:^|[/\\])\.\.$"),
    # --- Remote file inclusion
    S(RFI, 1, r"\b(?:https?|ftps?|file)://[^\s?#]{1,200}(?:\?{1,2}|#)\s{0,5}$"),
    # Schemes only a fetch abused for inclusion or SSRF uses (gopher, dict, netdoc, tftp, jar)
    S(RFI, 1, r"\b(?:gopher|dict|netdoc|tftp)://|\bjar:(?:https?|file|ftp)://"),
    # A whole value that names a script or text file on another host: over FTP/SMB, as a
    # protocol-relative or UNC path, or on a host given by its IP address
    S(
        RFI,
        1,
        r"^[\s'\"]{0,5}(?:(?:ftps?|smb|sftp)://|//|\\\\)[\w-]{1,63}\.[\w.-]{1,100}"
        r"(?::\d{1,5})?[/\\][^\s]{0,100}\.(?:php\d?|phtml|txt|inc|asp|aspx|jsp|sh|pl|py|"
        r"cgi)(?:$|[?#%\s'\"])|^[\s'\"]{0,5}(?:https?|ftps?)://\d{1,3}(?:\.\d{1,3}){3}"
        r"(?::\d{1,5})?/[^\s]{0,100}\.(?:php\d?|phtml|txt|inc|sh|pl|py|cgi)(?:$|[?#%\s'\"])",
    ),
    S(
        RFI,
        1,
        r"\b(?:include|require)(?:_once)?\s{0,5}\(?\s{0,5}['\"]?\s{0,5}(?:https?|ftps?|"
        r"php|data|expect|zip|phar)://",
    ),
    S(RFI, 1, r"^\s{0,5}(?:https?|ftps?)://[^/\s]{0,100}@"),
    S(RFI, 2, r"^\s{0,5}(?:https?|ftps?)://\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"),
    # --- Command injection
    S(CMDI, 1, r"(?:[;|`]|\$\()[\s+]{0,10}(?:\{\s{0,5})?" + _SEP_COMMAND),
    S(CMDI, 1, r"[\r\n][\s+]{0,10}(?:\{\s{0,5})?" + _SEP_COMMAND, in_lines_prefilter=False),
    S(
        CMDI,
        1,
        r"&[\s+]{0,10}(?:" + _STRONG_NAMES + "|netsh|cmd|powershell)" + _CMD_END + r"|&[\s+]"
        r"{0,10}"
        + _word_command(("cat", "ping", "id", "sleep", "dir", "net", "type", "ver", "del", "echo")),
    ),
    S(
        CMDI,
        1,
        r"^\s{0,10}[;&|)\]]{1,3}[\s+]{0,10}(?:"
        + _BIN
        + "?"
        + _NAMES
        + r"\b|"
        + _BIN
        + _WORDS
        + r"\b|"
        + _WORD_COMMAND
        + ")",
        prefilter=r"^\s*[;&|)\]]{1,3}[\s+]*[a-z/]",  # every command name starts so
    ),
    S(CMDI, 1, r"^[\s'\"]{0,10}" + _COMMANDS + r"\s{0,5}(?:[;|`]|\$\()"),
    S(
        CMDI,
        1,
        r"^[\s'\"@^]{0,10}" + _STRONG_COMMANDS + r"(?:\.exe)?\s{1,5}(?:-{1,2}[a-z]|/[a-z]|"
        r"/\s|/$|\\\\|[a-z]:[/\\]|\d{1,3}\.\d{1,3}\.|\w{1,40}\s{1,5}/[a-z])",
    ),
    S(CMDI, 1, r"^[\s'\"]{0,10}" + _BARE_COMMANDS + r"(?:\.exe)?[\s'\"]{0,5}$"),
    S(CMDI, 1, r"(?:^|[;&|(`\n]|\$\()\s{0,10}(?:/usr|/usr/local)?/s?bin/[a-z][\w.-]{0,20}\b"),
    S(CMDI, 2, r"(?:^|[\s;&|'\"(`])(?:/usr|/usr/local)?/s?bin/[a-z][\w.-]{0,20}\b"),
    S(CMDI, 1, r"\(\s{0,5}['\"`]\s{0,5}" + _COMMANDS + r"(?:\s|['\"`)])"),
    S(
        CMDI,
        1,
        r"\bdir[\s+]{1,5}[a-z]:(?:[/\\]|$|[\s+\"'|&;])|\b(?:net|netsh)\s{1,5}(?:user|"
        r"localgroup|view|share|use|firewall|advfirewall|interface|wlan)\b|"
        r"\becho\s[^\n]{0,200}>{1,2}\s{0,5}[\w./\\~-]{1,100}\s{0,5}$",
    ),
    S(CMDI, 1, r"(?:\$\(|`)\s{0,10}(?:" + _COMMANDS + r"|/)(?:[\s)`;|&]|$)"),
    S(CMDI, 2, r"\$\(\s{0,10}[a-z/][^)]{0,200}\)|`\s{0,10}[a-z/][^`]{0,200}`"),
    S(
        CMDI,
        1,
        r"\$\{?ifs\}?|\{[a-z/]{1,30},[^}\s]{1,100}\}",
        prefilter=r"\$\{?ifs|\{[a-z/]{1,30},[^}\s]",
    ),
    # Server-side includes: the directive is its own threat; `exec` runs a command as well
    S(
        SERVER_SIDE_INCLUDE,
        1,
        r"<!--\s{0,5}#\s{0,5}(?:exec|include|echo|config|fsize|flastmod|printenv|set|if|"
        r"elif)\s{1,10}[a-z]{1,10}\s{0,5}=|<!--\s{0,5}#\s{0,5}printenv\s{0,5}-->",
    ),
    S(CMDI, 1, r"<!--\s{0,5}#\s{0,5}exec\s{1,10}(?:cmd|cgi)\s{0,5}="),
    S(CMDI, 1, r"%(?:systemroot|comspec|windir|userprofile|programfiles|temp|appdata)%"),
    S(
        CMDI,
        1,
        r"^[\s'\"]{0,10}(?:type|dir|del|copy|move|attrib|icacls|cacls|more)(?:\.exe)?"
        r"\s{1,5}[a-z]:[\\/]|^[\s'\"]{0,10}reg(?:\.exe)?\s{1,5}(?:add|delete|query|save|"
        r"export|import)\s{1,5}[\"']?hk",
    ),
    S(CMDI, 1, r"\bcmd(?:\.exe)?\s{1,10}/[ck]\b|\bpowershell(?:\.exe)?\s{1,10}-\w"),
    S(
        CMDI,
        1,
        r"\b(?:system|shell_exec|passthru|popen|proc_open|pcntl_exec|exec|spawn|"
        r"execsync|spawnsync|os\.system|subprocess\.\w{1,20}|runtime\.getruntime\(\)\."
        r"exec)\s{0,5}\(\s{0,5}(?:['\"`\[]|\$[a-z_])",
    ),
    # The same functions called on a bare command name (PHP reads an undefined constant as its
    # name: system(id)), and the command-running APIs whose argument can be any expression
    # (a variable, a concatenation): Java's Runtime.exec and ProcessBuilder, Node's
    # child_process, PHP's shell-only functions, PHP's backtick operator on request input.
    S(
        CMDI,
        1,
        r"\b(?:system|shell_exec|passthru|popen|proc_open|pcntl_exec|exec|execsync|"
        r"spawn|spawnsync)\s{0,5}\(\s{0,5}" + _COMMANDS + r"\s{0,5}[,)]",
    ),
    S(
        CMDI,
        1,
        r"\bgetruntime\s{0,5}\(\s{0,5}\)\s{0,5}\.\s{0,5}exec\s{0,5}\(|"
        r"\bnew\s{1,5}(?:java\.lang\.)?processbuilder\s{0,5}\(|"
        r"\bchild_process['\"`]?\s{0,5}\)?\s{0,5}\.\s{0,5}(?:exec|execsync|execfile|"
        r"execfilesync|spawn|spawnsync|fork)\s{0,5}\(|"
        r"\b(?:shell_exec|passthru|proc_open|pcntl_exec)\s{0,5}\(\s{0,5}[\w$]|"
        r"`\s{0,5}\$_(?:get|post|request|cookie|server)\b",
    ),
    # Ruby's %x() command literal, .NET's Process.Start, and PowerShell cmdlets that read, run
    # or fetch: after a separator, or starting the value with an argument (a path, a switch)
    S(
        CMDI,
        1,
        r"%x[({\[]\s{0,5}" + _COMMANDS + _CMD_END + r"|\bprocess\s{0,5}\.\s{0,5}start"
        r"\s{0,5}\(\s{0,5}[\"'@$]",
    ),
    S(
        CMDI,
        1,
        r"(?:(?:[;&|`]|\$\()\s{0,10}"
        + _CMDLETS
        + r"(?:$|[\s;|)])|^[\s'\"]{0,10}"
        + _CMDLETS
        + r"\s{1,5}(?:-[a-z]|[a-z]:[/\\]|[/\\$'\"]|https?:))",
    ),
    # PowerShell: download cradles, encoded or policy-bypassing launches, and the aliases of the
    # cmdlets that run or fetch (iex, iwr, saps, ...) after a separator or starting the value
    # with an argument shaped like theirs (a URL, a drive, a switch, a parenthesis)
    S(
        CMDI,
        1,
        r"\bnew-object\s{1,5}(?:-typename\s{1,5})?(?:system\.)?net\.(?:webclient|sockets\.)|"
        r"\.download(?:string|file|data)(?:async)?\s{0,5}\(\s{0,5}['\"$(]|"
        r"\b(?:iex|invoke-expression)\s{0,5}\(|\[(?:system\.)?convert\]\s{0,5}::\s{0,5}"
        r"frombase64string|\s-(?:executionpolicy|exec|ep)\s{1,5}(?:bypass|unrestricted)\b|"
        r"\s-(?:encodedcommand|enc|ec|e)\s{1,5}[a-z0-9+/]{16,400}={0,2}(?:$|[\s'\"])",
    ),
    S(
        CMDI,
        1,
        r"(?:^[\s'\"]{0,10}|(?:[;&|`]|\$\()\s{0,10})(?:iex|iwr|irm|saps|icm|gci|sls|"
        r"invoke-webrequest|invoke-restmethod|start-process|start-bitstransfer)\s{1,5}"
        r"(?:-[a-z]|https?:|[a-z]:[/\\]|[/\\$'\"(]|[\w.-]{1,64}\.(?:exe|bat|cmd|ps1|vbs|"
        r"hta|msi|scr|dll)\b)",
    ),
    # A command reading its input from a file (cat</etc/passwd: no space needed), and bash's
    # ANSI-C quoting, which spells a command with escapes ($'cat\x20/etc/passwd')
    S(
        CMDI,
        1,
        r"^[\s'\"@]{0,10}" + _STRONG_COMMANDS + r"(?:\.exe)?\s{0,5}<\s{0,5}(?:/|~|\$|"
        r"\.{1,2}/)|\$'\s{0,5}" + _COMMANDS + _CMD_END,
    ),
    S(
        CMDI,
        1,
        r"/dev/(?:tcp|udp)/|\b(?:nc|ncat|netcat)\s{1,5}-[a-z]{0,5}e\s|\bmkfifo\s|"
        r"\b(?:bash|sh)\s{1,5}-i\b|\b(?:curl|wget)\s[^\n]{0,200}\|\s{0,5}(?:ba)?sh\b",
    ),
    S(
        CMDI,
        1,
        r"^\s{0,10}(?:ping|nslookup|dig|sleep|curl|wget)\s{1,5}(?:-[a-z]{1,3}\s{1,5}"
        r"\d{1,10}\s{1,5})?(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\d{1,5}\s{0,5}$|"
        r"https?://)",
    ),
    S(CMDI, 2, r"^\s{0,10}" + _COMMANDS + r"\s{1,10}(?:-{1,2}[a-z]|/|\$|%|\\\\)"),
    S(CMDI, 2, r"^\s{0,10}(?:which|whereis|type|command)\s{1,5}[a-z][\w.-]{0,30}\s{0,5}$"),
    # A whole value that looks up an attacker's tool (recon before a download or reverse shell)
    S(
        CMDI,
        1,
        r"^[\s'\"]{0,10}(?:which|whereis|command\s{1,5}-v|type\s{1,5}-[ap])\s{1,5}"
        + _TOOLS
        + r"(?:\.exe)?[\s'\"]{0,5}$",
    ),
    # A whole value that is only a command substitution of a shell builtin: the blind probe
    # $(false) / `true` (inside prose, a Markdown code span looks the same, so not anywhere).
    # The backtick spelling only from level 2: a whole Markdown value `true` is a code span
    # too, and running true or false has no effect beyond showing that substitution happens.
    S(CMDI, 1, r"^[\s'\"]{0,5}\$\(\s{0,5}(?:true|false)\s{0,5}\)[\s'\"]{0,5}$"),
    S(CMDI, 2, r"^[\s'\"]{0,5}`\s{0,5}(?:true|false)\s{0,5}`[\s'\"]{0,5}$"),
    # A value starting with a Windows binary that fetches or runs a script (mshta, regsvr32,
    # rundll32, ...) given a URL, a share, a drive path, a switch, a script scheme or a script
    # file; WMI's process creation; a netcat handing a shell to the other end wherever -e comes
    # among its arguments; busybox running a network or shell applet
    S(
        CMDI,
        1,
        r"^[\s'\"@^]{0,10}(?:mshta|regsvr32|rundll32|cscript|wscript|msiexec|installutil|"
        r"regasm|msbuild|cmstp|forfiles|certreq|msxsl)(?:\.exe)?\s{1,5}(?:https?:|\\\\|"
        r"[a-z]:[/\\]|/[a-z]|-[a-z]|(?:java|vb)script:|[\w.-]{1,64}\.(?:hta|sct|dll|js|vbs|wsf|"
        r"msi|xml|csproj|inf)\b)|\bwmic(?:\.exe)?\s{1,5}(?:/node:|process\s{1,5}call\s{1,5}"
        r"create|shadowcopy\s{1,5}delete|useraccount\s{1,5}(?:get|list))|"
        r"\b(?:nc|ncat|netcat)(?:\.exe)?\s[^\n;|&]{0,100}\s-[a-z]{0,5}e\s{1,5}"
        r"(?:/bin/)?(?:ba|z|k|da)?sh\b|\bbusybox\s{1,5}(?:nc|sh|ash|telnetd|httpd|wget|tftp)\b",
    ),
    # The same binaries, busybox, and printf (which spells a command from escapes inside a
    # substitution: $(printf "\x69\x64")) after a separator or inside $( (kept apart from the
    # separator signature above, which Hyperscan cannot grow further)
    S(
        CMDI,
        1,
        r"(?:[;|`&]|\$\()[\s+]{0,10}(?:mshta|regsvr32|rundll32|cscript|wscript|msiexec|"
        r"busybox|printf)(?:\.exe)?" + _CMD_END,
    ),
    # Wildcards standing in for a binary's path or name: /???/c?t, /bin/wh?ami, /usr/bin/n*
    # (a directory ending in '?' or /bin, then a name with a letter and a wildcard)
    S(CMDI, 1, r"(?:\?|/s?bin)/(?:[a-z]{1,8}[?*]|[?*]{1,8}[a-z])[a-z?*]{0,8}(?:$|[\s;&|`)])"),
    # Substring expansion of a variable, to conjure a '/' or a letter: ${PATH:0:1}, ${HOME:0:1}
    S(CMDI, 1, r"\$\{[a-z_]{1,30}:\d{1,3}:\d{1,3}\}"),
    # --- Server-side template injection
    S(
        SSTI,
        1,
        r"\{\{[^}]{0,200}(?:__[a-z]{2,20}__|\.mro\b|subclasses|\bconfig\b|\bself\b|"
        r"\brequest\b|cycler|joiner|namespace|lipsum|url_for|get_flashed_messages|popen|"
        r"\bimport\b|\bos\b|getclass|forname|\bdump\s{0,5}\(|\bapp\b|\.class\b|"
        r"\|\s{0,5}(?:attr|filter|join|map|e)\b|\.__)",
    ),
    S(
        SSTI,
        1,
        r"\{\{\s{0,20}['\"]?[\w.]{0,30}['\"]?\s{0,20}[*+/%-]\s{0,20}['\"]?[\w.]{1,30}"
        r"['\"]?\s{0,20}\}\}",
    ),
    S(SSTI, 1, r"\{%[^%]{0,200}%\}|\{\{[^}]{0,200}\.[a-z_]\w{0,30}\s{0,5}\("),
    S(
        SSTI,
        1,
        r"\$\{\s{0,20}['\"]?\w{1,30}['\"]?\s{0,20}[*+/%-]\s{0,20}['\"]?\w{1,30}['\"]?"
        r"\s{0,20}\}|\$\{\{|\[\[\s{0,5}\d{1,10}\s{0,5}[*+]\s{0,5}\d{1,10}\s{0,5}\]\]",
    ),
    S(
        SSTI,
        1,
        r"#\{\s{0,20}[^}]{0,200}[*+(.][^}]{0,200}\}|<%=?[^%]{0,200}%>|@\(\s{0,5}\d{1,10}"
        r"\s{0,5}[*+-]\s{0,5}\d{1,10}\s{0,5}\)|(?:^|[^*])\*\{[^}]{0,200}\}",
    ),
    S(
        SSTI,
        1,
        r"\$\{[^}]{0,200}(?:\bt\s{0,5}\(|\.getclass|\.forname|runtime|processbuilder|"
        r"\bself\.|__\w{2,20}__|\.module\.|\.system\s{0,5}\(|freemarker|\?new\s{0,5}\(|"
        r"\bos\.|class\.|getruntime|exec\s{0,5}\()",
    ),
    S(
        SSTI,
        1,
        r"freemarker\.template\.utility\.(?:execute|objectconstructor|jythonruntime)|"
        r"<#assign\b|\[#assign\b|#set\s{0,5}\(\s{0,5}\$|#foreach\s{0,5}\(|"
        r"\{php\}|\{/php\}|\{\$smarty\.|\{if\s[^}]{0,200}\}|\{\{=|\$\{\{|"
        r"javax\.script\.scriptenginemanager|__\$\{",
    ),
    # OGNL / Spring EL (Struts2 CVE-2017-5638 style, often in Content-Type): expression language
    S(
        SSTI,
        1,
        r"[%$]\{\s{0,5}\(\s{0,5}#|#_memberaccess|"
        r"@java\.lang\.(?:runtime|system|processbuilder)@|#context\s{0,5}\[|ognlcontext|@ognl\.|#(?:request|response|session|application)"
        r"\s{0,5}\[?\s{0,5}['\"]?(?:org|com)\.",
    ),
    S(SSTI, 2, r"\{\{[^}]{1,200}\}\}|\$\{[^}]{1,200}\}"),
    # --- JNDI / Log4Shell (obfuscated lookups are resolved by normalise.alternate)
    S(
        JNDI,
        1,
        r"\$\{\s{0,20}jndi\s{0,20}:|\bjndi\s{0,20}:\s{0,20}(?:ldaps?|rmi|dns|iiop|"
        r"corba|nds|nis|http|https)\s{0,5}:",
    ),
    S(
        JNDI,
        1,
        r"\$\{[^}]{0,40}\$\{\s{0,20}(?:lower|upper|::-|env|sys|date|[a-z]{1,10}:[^}]{0,40}"
        r":-)[^}]{0,40}\}",
    ),
    S(
        JNDI,
        2,
        r"\$\{\s{0,20}(?:env|sys|java|main|ctx|map|sd|k8s|docker|spring|log4j|web|"
        r"jvmrunargs|bundle|marker|base64|date|lower|upper|::-)\s{0,20}:",
    ),
    # --- PHP code injection (functions that take arguments only with one: prose names them
    # bare, "eval()", "putenv()")
    S(PHP, 1, r"<\?(?:php\b|=)|\?>\s{0,5}$"),
    S(PHP, 1, r"\b(?:php|phar|zip|expect|glob|zlib|compress\.zlib|data)://"),
    S(
        PHP,
        1,
        r"\b(?:eval|assert|create_function|call_user_func(?:_array)?|preg_replace|"
        r"base64_decode|gzinflate|str_rot13|file_get_contents|file_put_contents|fopen|"
        r"readfile|include|require|include_once|require_once|highlight_file|show_source|"
        r"unserialize|ini_set|putenv)\s{0,5}\(\s{0,5}[\"'$\[a-z(]|"
        r"\b(?:phpinfo|phpversion)\s{0,5}\(\s{0,5}[\"'$\[a-z()]",
    ),
    S(PHP, 1, r"\{\$\{|\$\{@|;\s{0,5}phpinfo\s{0,5}\(|^\s{0,5}phpinfo\s{0,5}\(\s{0,5}\)"),
    S(
        PHP,
        1,
        r"\$_(?:get|post|request|cookie|server|files|env|session)\s{0,5}\[|"
        r"\bo:\d{1,5}:\"[a-z_\\][\w\\]{0,100}\":\d{1,5}:\{|\ba:\d{1,5}:\{[si]:\d",
    ),
    # --- LDAP filter injection: a value that closes the application's filter and opens its own
    # (*)(uid=*), admin)(&), *)(|(objectclass=*)), or an always-true filter of its own
    # (RFC 4515 filters have no spaces between their parentheses and operators)
    S(
        LDAP_INJECTION,
        1,
        r"\)\({1,3}[|&!](?:\(|\)|$|[a-z][\w.;-]{0,40}[~<>]?=)|\)\([a-z][\w.;-]{0,40}[~<>]?=\*|"
        r"^\s{0,5}\*\)\(|\([|&]\([a-z][\w.;-]{0,40}[~<>]?=[^)]{0,100}\)|\(objectclass=\*\)",
    ),
    # --- Mail header and command injection: a line break inside an address or subject field
    # followed by a mail header (Bcc:, To:, ...), an SMTP command or an IMAP command with its tag
    S(
        MAIL_HEADER_INJECTION,
        1,
        r"^\s{0,5}[^\s\r\n]{1,200}\s{0,5}[\r\n]{1,4}\s{0,5}(?:b?cc|to|from|subject|reply-to|"
        r"sender|return-path|content-type|mime-version|x-mailer)\s{0,5}:|"
        r"[\r\n]\s{0,5}(?:rcpt\s{1,5}to|mail\s{1,5}from)\s{0,5}:\s{0,5}<|"
        r"[\r\n]\s{0,5}(?:helo|ehlo)\s{1,5}[\w.-]{1,100}\s{0,5}(?:$|[\r\n])|"
        r"[\r\n]\s{0,5}[a-z]{0,4}\d{1,6}\s{1,5}(?:capability|logout|noop|login\s{1,5}[^\s]{1,100}"
        r"\s{1,5}[^\s]|select\s{1,5}\"?inbox|fetch\s{1,5}[\d*:,]{1,20}\s{1,5}\(?(?:body|rfc822|"
        r"flags|all|full))",
        in_lines_prefilter=False,
    ),
    # a Cc/Bcc header line anywhere in a value (a forwarded mail pasted into a ticket has them)
    S(
        MAIL_HEADER_INJECTION,
        2,
        r"[\r\n]\s{0,5}b?cc\s{0,5}:\s{0,5}[^\s@\r\n]{1,64}@",
        in_lines_prefilter=False,
    ),
    # --- NoSQL injection (operator keys in JSON bodies are checked by the detector too)
    S(NOSQL, 1, r"\[\s{0,5}\$" + _NOSQL_OPS + r"\s{0,5}\]"),
    S(NOSQL, 1, r"[{,]\s{0,20}['\"]?\$" + _NOSQL_OPS + r"['\"]?\s{0,20}:"),
    S(
        NOSQL,
        1,
        r"\bthis\s{0,5}\.\s{0,5}\w{1,64}\s{0,5}\.\s{0,5}(?:match|length|charat|"
        r"indexof|startswith|substring)\s{0,5}\(|\bdb\s{0,5}\.\s{0,5}\w{1,64}\s{0,5}\."
        r"\s{0,5}(?:find|insert|update|remove|drop|mapreduce|aggregate)\w{0,10}\s{0,5}\(|"
        r"\bdb\.getcollection\s{0,5}\(",
    ),
    S(
        NOSQL,
        1,
        r"['\"]\s{0,20};\s{0,20}(?:sleep\s{0,5}\(\s{0,5}\d|return\b|while\s{0,5}\(|"
        r"it\s{0,5}=\s{0,5}new\s{1,5}date|var\s|db\.)|;\s{0,5}return\s{1,5}(?:true|"
        r"1|\(true\))\b|\breturn\s{0,5}\(true\)|\|\|\s{0,5}1\s{0,5}==\s{0,5}1|"
        r"['\"]\s{0,5}&&\s{0,5}this\b|\bemit\s{0,5}\(\s{0,5}1",
    ),
    S(NOSQL, 1, r"\$where\s{0,5}['\"]?\s{0,5}:|\$(?:ne|gt|regex|exists)\s{0,5}['\"]?\s{0,5}:"),
    # --- SSRF to cloud metadata (numeric spellings of the addresses: see detector.py)
    S(
        SSRF,
        1,
        r"\b" + _METADATA_HOSTS + r"\b|/latest/(?:meta-data|user-data|api/token)|"
        r"/computemetadata/v1|/metadata/(?:instance|identity)\b|/openstack/latest/|"
        r"\bfd00:ec2::254\b",
    ),
    # --- Java deserialization
    S(
        JAVA,
        1,
        r"\bro0ab|\baced0005|\\xac\\xed\\x00\\x05|\bh4siaaaaaaaaaj[uw]|"
        r"org\.apache\.commons\.collections\d?\.functors|invokertransformer|"
        r"templatesimpl|\bysoserial\b|java\.lang\.(?:runtime|processbuilder)|"
        r"com\.sun\.rowset\.jdbcrowsetimpl|\"@type\"\s{0,5}:\s{0,5}\"(?:com|org|java|javax)\.|"
        r"javax\.naming\.initialcontext|java\.beans\.xmldecoder|"
        r"<java\s[^>]{0,100}class\s{0,5}=\s{0,5}\"java\.beans",
    ),
    # --- XML external entities
    S(
        XXE,
        1,
        r"<!entity\s{1,20}%?\s{0,20}[\w.-]{1,100}\s{1,20}(?:system|public)\b|"
        r"<!doctype[^>\[]{0,200}\[\s{0,20}<!entity|<xi:include\b|"
        r"<!doctype\s{1,20}\w{1,100}\s{1,20}(?:system|public)\s",
    ),
    # --- CRLF / header injection (decoded CR or LF followed by a header or a request line)
    S(
        CRLF,
        1,
        r"[\r\n]\s{0,5}(?:set-cookie|location|content-(?:length|type)|"
        r"transfer-encoding|x-[\w-]{1,40}|refresh|host)\s{0,5}:|"
        r"[\r\n]\s{0,5}(?:get|post|put|delete|head|options) /[^\s]{0,200} http/\d",
    ),
)

# Where libinjection can find something: quotes that are not inside a word (don't, O'Brien),
# comments, SQL keywords followed by an operator; markup and attribute contexts. Also pre-filter
# indicators, so the pre-filter never skips a value libinjection would flag.
SQL_GATE = (
    r"(?:^|[^a-z])['\"`]|['\"`](?:[^a-z]|$)|/\*[^;,*\s]|/\*\*/|"
    r"\b(?:or|and|union|select|having|xor|exec|sleep|order|group|waitfor|div)\b[^\n]{0,60}"
    r"(?:[=<>(#;@]|--)"
)
XSS_GATE = r"<[a-z!/?%]|\bon[a-z]{3,30}\s{0,10}=|script\s{0,10}:|\bstyle\s{0,10}="

# A value that starts with a URL to a host given by its IP address (IPv4 dotted, IPv6 in
# brackets), after optional credentials: a remote inclusion when the address lies outside the
# networks a mesh's own services live in (detector.remote_address decides).
IP_URL = (
    r"^[\s'\"]{0,5}(?:file|ftps?|https?|ssh)://(?:[^/@\s]{1,100}@)?"
    r"(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[0-9a-f:.]{2,45}\])"
)

# Attack tools and vulnerability scanners by the names their user agents carry (their default
# User-Agent headers). Generic HTTP libraries (curl, python-requests, Go-http-client) are not
# listed: services in a mesh call each other with them.
SCANNER_AGENTS = (
    r"\b(?:sqlmap|nikto|nmap\s{1,5}scripting\s{1,5}engine|nmap|masscan|zgrab|nuclei|"
    r"dirbuster|gobuster|feroxbuster|dirb|wfuzz|fuzz\s{1,5}faster\s{1,5}u\s{1,5}fool|ffuf|"
    r"acunetix|netsparker|invicti|w3af|openvas|nessus|arachni|skipfish|whatweb|wpscan|"
    r"joomscan|droopescan|cmsmap|commix|havij|sqlninja|jsql|ghauri|xsstrike|xsser|tplmap|"
    r"sstimap|dotdotpwn|fimap|lfisuite|wapiti|appscan|webinspect|qualysguard|detectify|"
    r"zmeu|morfeus|jorgee|hydra|burp\s{0,5}collaborator|interactsh|"
    r"nettacker|jaeles|shortscan|graphw00f|paros|webshag|libwhisker|n-stalker|appspider|"
    r"ironwasp|jbrofuzz|whatwaf|bfac|wprecon|wpprobe|sysscan|tsunamisecurityscanner|lfimap|"
    r"kadimus|panoptic|graphql-cop|tinja|webbandit|l9explore|l9tcpid|trufflehog|"
    r"noseyparker|dirsearch|dalfox)\b"
)

# Raw-byte pre-filter only: when one of these appears, the part is decoded and checked closely.
# Never a finding by itself.
INDICATORS: tuple[str, ...] = (
    r"%(?:[0-9a-f]{2}|u[0-9a-f]{4})",  # percent or %u encoding
    r"&(?:#|[a-z][a-z0-9]{1,31};|lt|gt|quot|apos)",  # HTML entity
    r"\\(?:u\{?[0-9a-f]{4}|x[0-9a-f]{2}|[\"'/nrt0])",  # backslash escapes (JSON strings, JS)
    r"[\x00-\x08\x0b\x0c\x0e-\x1f]",  # control characters (NUL, stripped before matching)
    r"\xef\xbc[\x81-\xbf]|\xef\xbd[\x80-\x9e]",  # fullwidth ASCII in UTF-8
    COMMENT_INDICATOR,  # comments used as whitespace
    r"\$\{",  # lookups and template expressions
    SQL_GATE,  # what libinjection's SQL tokeniser needs (injection.py runs it only then)
    XSS_GATE,  # what libinjection's HTML5 tokeniser needs
    PATH_INDICATOR,  # path spellings that path normalisation collapses
    WINDOWS_ESCAPE_INDICATOR,  # a Windows path's \t, \n, \r read as escapes (normalise.alternate)
    r"(?:^|[^\w.])(?:0*169|0x0*a9|0+251)[.]|\b0*2852039166\b|\b0x0*a9fea9fe\b|"
    r"\b0+25177524776\b|a9fe:a9fe|\b0*100\.0*100\.0*100\.0*200\b|metadata",  # metadata IPs
    r"\$[a-z]{2,12}",  # NoSQL operator keys and shell variables
    IP_URL,  # a value that is a URL to an IP address (detector.remote_address)
    SPLIT_WORD_INDICATOR,  # shell quoting inside a word (normalise.unsplit)
    SCANNER_AGENTS,  # attack tools in a user-agent (detector._detail)
)

# MULTILINE: ^ and $ also match at the newlines that separate parts in the pre-filter buffer
# (and at newlines inside values, where injected commands start).
FLAGS = hyperscan.HS_FLAG_CASELESS | hyperscan.HS_FLAG_ALLOWEMPTY | hyperscan.HS_FLAG_MULTILINE
_WINDOW = 512  # bytes before a match end searched for its start (longest signature match)


# This Hyperscan build misses matches of a bounded whitespace repeat followed by a literal once
# ~30 bytes precede it (`;\s{0,20}select` fails on "x"*40 + "; select"; `\s{0,15}`, `\s*` and
# `[ ]{0,20}` work). Found by differential testing against Python's re
# (tests/threats/test_detector.py::test_hyperscan_agrees_with_re). Workaround: Hyperscan gets
# whitespace repeats unbounded (a superset of the signature: never a missed match).
_BOUNDED_SPACE = re.compile(r"\\s\{([01]),\d+\}")


def hyperscan_pattern(pattern: str) -> bytes:
    """The signature as compiled into Hyperscan (see _BOUNDED_SPACE)."""
    return _BOUNDED_SPACE.sub(lambda m: r"\s*" if m.group(1) == "0" else r"\s+", pattern).encode()


def signatures_for(level: int) -> tuple[Signature, ...]:
    return tuple(s for s in SIGNATURES if s.level <= level)


class SignatureSet:
    """Hyperscan databases for one level: `detail` (signatures over normalised text) and
    `prefilter` (signatures plus INDICATORS over raw bytes)."""

    def __init__(self, level: int, cache: CompiledCache | None = None) -> None:
        self.level = level
        self.signatures = signatures_for(level)
        pats = [hyperscan_pattern(s.pattern) for s in self.signatures]
        single = hyperscan.HS_FLAG_SINGLEMATCH
        self._detail = _compile(pats, single, cache)
        indicators = [hyperscan_pattern(p) for p in INDICATORS]
        wide = [hyperscan_pattern(s.prefilter or s.pattern) for s in self.signatures]
        self._prefilter = _compile(wide + indicators, single, cache)
        line_pats = [
            hyperscan_pattern(s.prefilter or s.pattern)
            for s in self.signatures
            if s.in_lines_prefilter
        ]
        # every match reported: the detector maps each to the part it ends in, and one pattern
        # may match in several parts (single-match mode would report only the first)
        self._prefilter_lines = _compile(line_pats + indicators, 0, cache)
        self._regex: dict[int, re.Pattern[bytes]] = {}

    def scan(self, data: bytes) -> list[tuple[int, int]]:
        """Signature matches in normalised text: (index into .signatures, end offset), at most
        one per signature (Hyperscan single-match mode)."""
        found: list[tuple[int, int]] = []

        def on_match(sid: int, start: int, end: int, flags: int, ctx: object) -> None:
            found.append((sid, end))

        self._detail.scan(data, match_event_handler=on_match)
        return found

    def matched_text(self, sid: int, data: bytes, end: int) -> bytes:
        """The matched fragment ending at `end` (Hyperscan reports ends only): found again with
        Python's re in a bounded window before `end`, else the window's last 64 bytes."""
        rx = self._regex.get(sid)
        if rx is None:
            rx = self._regex[sid] = re.compile(
                self.signatures[sid].pattern.encode(), re.IGNORECASE | re.MULTILINE
            )
        start = max(0, end - _WINDOW)
        m = rx.search(data, start, end)
        return data[m.start() : m.end()] if m else data[max(start, end - 64) : end]

    def matches(self, sid: int, data: bytes, end: int, limit: int = 8) -> list[tuple[int, int]]:
        """Spans of signature `sid` in data: the one ending at `end` (Hyperscan reports the
        first end only) and up to `limit` after it, found again with Python's re."""
        rx = self._regex.get(sid)
        if rx is None:
            rx = self._regex[sid] = re.compile(
                self.signatures[sid].pattern.encode(), re.IGNORECASE | re.MULTILINE
            )
        first = rx.search(data, max(0, end - _WINDOW), end)
        out = [(first.start(), first.end())] if first else [(max(0, end - 64), end)]
        for n, m in enumerate(rx.finditer(data, end)):
            if n >= limit:
                break
            out.append((m.start(), m.end()))
        return out

    def prefilter(
        self,
        data: bytes,
        on_match: Callable[..., bool | None],
        *,
        lines: bool = False,
        context: object = None,
    ) -> None:
        """Raw pre-filter pass; on_match(id, from, to, flags, context) as Hyperscan calls it,
        and may return True to stop early. lines: newlines in data separate values."""
        db = self._prefilter_lines if lines else self._prefilter
        # try, not contextlib.suppress: building that object cost ~0.8 µs of the typical request
        try:
            db.scan(data, on_match, 0, context)
        except hyperscan.ScanTerminated:
            return  # on_match stopped the scan

    def suspicious(self, data: bytes) -> bool:
        """Whether the pre-filter matches anywhere in raw data (one value or one body)."""
        hits: list[int] = []

        def on_match(sid: int, start: int, end: int, flags: int, ctx: object) -> bool:
            hits.append(sid)
            return True

        self.prefilter(data, on_match)
        return bool(hits)


_HS_VERSION = importlib.metadata.version("hyperscan")


class CompiledCache(Protocol):
    """Where compiled databases are kept between starts (the app gives one: a directory,
    meshward.app.sigcache). The core only computes keys and (de)serialises."""

    def load(self, key: str) -> bytes | None: ...

    def save(self, key: str, data: bytes) -> None: ...


def cache_key(patterns: list[bytes], extra: int) -> str:
    """Covers the patterns, the flags and the Hyperscan binding's version, so a changed
    signature set never loads a stale database."""
    return hashlib.sha256(
        b"\0".join([_HS_VERSION.encode(), str(FLAGS | extra).encode(), *patterns])
    ).hexdigest()[:32]


def _compile(
    patterns: list[bytes], extra: int, cache: CompiledCache | None = None
) -> hyperscan.Database:
    """Compile a database, or load it from `cache`: compiling costs ~1 s of CPU per start.
    A missing, corrupt or failing cache only costs the compile."""
    key = cache_key(patterns, extra)
    if cache is not None:
        with contextlib.suppress(TypeError, ValueError, hyperscan.error):
            data = cache.load(key)
            if data is not None:
                loaded = hyperscan.loadb(data, hyperscan.HS_MODE_BLOCK)
                loaded.scratch = hyperscan.Scratch(loaded)  # a loaded database has none
                return loaded
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(
        expressions=patterns,
        ids=list(range(len(patterns))),
        elements=len(patterns),
        flags=[FLAGS | extra] * len(patterns),
    )
    if cache is not None:
        cache.save(key, hyperscan.dumpb(db))
    return db
