"""The `meshward` sub-commands, one module each (registered through meshward.app.cli.COMMANDS)."""
