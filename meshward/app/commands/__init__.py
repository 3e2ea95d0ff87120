"""The `meshward` sub-commands, one module each (registered through meshward.app.cli.COMMANDS),
and what they share with the command line itself."""


class UsageError(Exception):
    """Bad input or configuration: reported as one line, exit status 2."""
