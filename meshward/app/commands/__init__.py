"""The `meshward` sub-commands, one module each (registered through meshward.app.cli.COMMANDS),
and what they share with the command line itself."""

import sys
from datetime import UTC, datetime


class UsageError(Exception):
    """Bad input or configuration: reported as one line, exit status 2."""


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 service`, `3 services`: counts in the commands' messages read as English."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def utc(ts: object, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """An epoch time as a UTC date for people ('' for none): what tables print."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts <= 0:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


def write_output(path: str | None, text: str) -> None:
    """A command's document to the `--output` file, or to stdout when there is none."""
    if not path:
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from exc
