"""The `meshward` sub-commands, one module each (registered through meshward.app.cli.COMMANDS),
and what they share with the command line itself."""


class UsageError(Exception):
    """Bad input or configuration: reported as one line, exit status 2."""


def plural(n: int, one: str, many: str | None = None) -> str:
    """`1 service`, `3 services`: counts in the commands' messages read as English."""
    return f"{n} {one if n == 1 else (many or one + 's')}"
