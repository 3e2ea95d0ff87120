"""The namespace modes (README, "Modes"): the one definition every command and adapter imports."""

MODES = ("learn", "monitor", "enforce")
DEFAULT_MODE = "learn"
