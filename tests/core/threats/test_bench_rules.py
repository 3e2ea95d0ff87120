"""The rules bench/detect.py uses to set aside rows of a class's list that cannot be of the
class (the "excl" columns): they must never set aside a real attack, spelled in any way."""

from __future__ import annotations

import pytest

from bench.detect import PLACEHOLDER, not_a_command, not_a_traversal

COMMANDS = [
    "; cat /etc/passwd",
    "|id",
    "`whoami`",
    "$(sleep 5)",
    "test`whoami`",
    "w'h'o'am'i",
    "wh\\oami",
    "/???/c?t /???/p?ss??",
    "%0Aid",
    "& ping -n 5 127.0.0.1",
    "|| dir c:\\",
    "${@print(system($_SERVER['HTTP_USER_AGENT']))}",
    "<?php passthru($_GET['c']); ?>",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('id') }}",
    "ls",
    "pwd",
    "route",
    "sysinfo",
    "`true`",
    "'false'",
    "@^p^o^w^e^r^shell",
    "cat$IFS/etc/passwd",
    "%uff1b%uff49%uff44",  # fullwidth ;id
]
NOT_COMMANDS = [
    ";",
    "| ",
    "&& ",
    "%0a",
    "\\r\\n",
    "'\"",
    "phpinfo()",
    "{${sleep(20)}}",
    "{{4+4}}",
    "{{person.name}}",
    "asdf3334",
    ";${@print(md5(RCEVulnerable))};",
]
TRAVERSALS = [
    "../../etc/passwd",
    "..\\..\\boot.ini",
    "%2e%2e%2f{file}",
    "%uff0e%uff0e/{FILE}",
    ".\\/\\.\\.\\/{FILE}",
    "/...{file}",
    "/etc/passwd",
    "file:///x",
    "c:\\windows\\win.ini",
    "x.php%00.jpg",
    "~/.ssh/id_rsa",
    "/aaaa/../../{file}",
    "/.aws/credentials",
    "..;/x",
]
NOT_TRAVERSALS = [
    "/./",
    "//{file}",
    "/.//././/./{file}",
    "./\\/./{FILE}",
    "/" + "a" * 200,
    "/" + "a" * 200 + "....{file}",
    "/iii{file}",
]


@pytest.mark.parametrize("value", COMMANDS)
def test_commands_are_never_set_aside(value: str) -> None:
    assert not not_a_command(value)


@pytest.mark.parametrize("value", NOT_COMMANDS)
def test_rows_without_a_command_are_set_aside(value: str) -> None:
    assert not_a_command(value)


@pytest.mark.parametrize("value", TRAVERSALS)
def test_traversals_are_never_set_aside(value: str) -> None:
    assert not not_a_traversal(value)


@pytest.mark.parametrize("value", NOT_TRAVERSALS)
def test_rows_naming_no_file_are_set_aside(value: str) -> None:
    assert not_a_traversal(value)


def test_placeholder_is_a_single_braced_file_name() -> None:
    """The `{file}` a fuzzer fills in, in either case; a template's {{file}} is no placeholder."""
    assert PLACEHOLDER.sub("etc/passwd", "//{file}") == "//etc/passwd"
    assert PLACEHOLDER.sub("x", "/..{FILE}") == "/..x"
    assert PLACEHOLDER.search("{{file}}") is None
    assert PLACEHOLDER.search("{name}") is None
