"""A newcomer's mistakes on the command line: reported under the sub-command's own usage, with
the nearest spelling, for every sub-command (the real parser, all commands registered)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshward.app import cli
from meshward.app.commands.parser import Parser, suggestion
from tests.support.cli import invoke


def test_a_wrong_flag_is_reported_under_the_sub_command_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = invoke(capsys, "allowlist", "show", "--destinaton", "shop/api")
    code, text = r.code, r.text
    assert code == 2
    assert text.startswith("usage: meshward allowlist show [-h] [--destination SERVICE]")
    assert text.rstrip().endswith(
        "meshward allowlist show: error: unrecognized arguments: --destinaton shop/api "
        "(did you mean --destination?)"
    )
    r = invoke(capsys, "score", "x.har", "--deny-treshold=0.3")
    code, text = r.code, r.text
    assert code == 2 and text.startswith("usage: meshward score ")
    assert "(did you mean --deny-threshold?)" in text
    r = invoke(capsys, "mode", "get", "--zzz")
    code, text = r.code, r.text
    assert code == 2 and text.startswith("usage: meshward mode get ")
    assert text.rstrip().endswith("unrecognized arguments: --zzz")  # nothing close: no guess


def test_every_sub_command_reports_its_own_wrong_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """One parser class for all: every command (and action) names itself in the usage."""
    parser = cli.build_parser()
    seen = 0
    stack: list[tuple[list[str], Parser]] = [([], parser)]  # type: ignore[list-item]
    while stack:
        path, p = stack.pop()
        assert isinstance(p, Parser), path
        subs = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        for action in subs:
            for name, child in action.choices.items():  # type: ignore[union-attr]
                stack.append(([*path, name], child))
        if path and not subs:
            seen += 1
            try:
                p.parse_known_args(["--no-such-flag-here"])
            except SystemExit as exc:
                assert exc.code == 2
            err = capsys.readouterr().err
            assert err.startswith(f"usage: meshward {' '.join(path)} "), (path, err)
            assert f"meshward {' '.join(path)}: error: " in err, err
    assert seen >= 15


def test_a_misspelt_choice_or_command_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    r = invoke(capsys, "mode", "set", "shop", "enfroce")
    code, text = r.code, r.text
    assert code == 2 and text.startswith("usage: meshward mode set ")
    assert "invalid choice: 'enfroce'" in text and "(did you mean enforce?)" in text
    r = invoke(capsys, "lern", "x.har")
    code, text = r.code, r.text
    assert code == 2 and "(did you mean learn?)" in text
    assert suggestion("xyzzy", ["learn", "score"]) == ""


def test_no_arguments_shows_the_overview(capsys: pytest.CaptureFixture[str]) -> None:
    r = invoke(capsys)
    code, text = r.code, r.text
    assert code == 2
    assert text.startswith("usage: meshward [-h] [--version] COMMAND ...")
    assert "New here? `meshward demo`" in text
    # every command name and its help on one line (argparse wrapped names of 9+ characters)
    for line in text.splitlines():
        assert line.strip() not in ("allowlist", "controller", "uninstall", "dashboard"), text


def test_the_command_line_starts_without_the_network_stacks() -> None:
    """Every `meshward` run builds the whole parser: what only one command needs (aiohttp, gRPC,
    Envoy's protos, the Kubernetes client) is imported by that command, so `meshward mode` or
    `meshward alerts` start in a fraction of a second."""
    code = (
        "import sys; from meshward.app import cli; cli.build_parser(); "
        "print(' '.join(m for m in ('aiohttp', 'grpc', 'envoy', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
