"""The argument parser of every `meshward` command: a wrong flag or a misspelt choice is reported
under the usage of the sub-command it was given to, with the nearest known spelling.

Python 3.11's argparse hands a sub-command's unknown arguments back to the top-level parser,
which reports them under `usage: meshward [-h] [--version] COMMAND ...` (no hint of where the
flag belonged); its own `suggest_on_error` arrives in 3.14. Every sub-parser is made from this
class (argparse gives sub-parsers their parent's class), so the rule holds for all of them.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Sequence
from typing import Any


def suggestion(word: str, known: Iterable[str]) -> str:
    """` (did you mean X?)` for the closest known spelling, or '' when none is close."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class _Formatter(argparse.HelpFormatter):
    """Sub-command names and their help on one line: argparse measures the names without the
    indent it then prints them with, so every name of 9 characters or more wrapped."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=28)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction) and action.choices:
            longest = max(map(len, action.choices)) + self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, longest)


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose sub-commands report their own unknown arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized(extras))
        return ns, extras

    def _unrecognized(self, extras: list[str]) -> str:
        msg = f"unrecognized arguments: {' '.join(extras)}"
        flags = [a for a in extras if a.startswith("-") and len(a) > 1]
        if not flags:
            return msg
        known = [s for action in self._actions for s in action.option_strings]
        return msg + suggestion(flags[0].split("=", 1)[0], known)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as exc:
            known = map(str, action.choices or ())
            hint = suggestion(value, known) if isinstance(value, str) else ""
            if not hint:
                raise
            raise argparse.ArgumentError(action, f"{exc.message}{hint}") from None
