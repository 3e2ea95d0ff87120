"""The `meshward` sub-commands, one module each (registered through meshward.cli.COMMANDS)."""
