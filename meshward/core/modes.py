"""The namespace modes (DESIGN.md): the one definition every command and adapter imports."""

MODES = ("learn", "monitor", "enforce")
DEFAULT_MODE = "learn"
