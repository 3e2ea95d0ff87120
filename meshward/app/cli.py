"""The `meshward` command line: one sub-command per module under `meshward.app.commands`.

Each command module has `register(subparsers)` that adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from meshward import __version__
from meshward.app.commands import UsageError
from meshward.app.commands.parser import Parser

# sub-command modules, in the order `meshward --help` lists them
COMMANDS = [
    "meshward.app.commands.learn",
    "meshward.app.commands.score",
    "meshward.app.commands.allowlist",
    "meshward.app.commands.mode",
    "meshward.app.commands.alerts",
    "meshward.app.commands.serve",
    "meshward.app.commands.tap",
    "meshward.app.commands.envoy",
    "meshward.app.commands.ca",
    "meshward.app.commands.istio",
    "meshward.app.commands.demo",
    "meshward.app.commands.nodetap",
    "meshward.app.commands.install",
    "meshward.app.commands.controller",
    "meshward.app.commands.dashboard",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="meshward",
        description="Security layer for service meshes: learned L7 allowlists, threat detection.",
        epilog="New here? `meshward demo` runs a small shop behind real Envoy sidecars and shows "
        "learning, enforcing and attacks denied; `meshward COMMAND --help` says more.",
    )
    parser.add_argument("--version", action="version", version=f"meshward {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help(sys.stderr)  # a first try with no arguments: the overview, not an error
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"meshward {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
