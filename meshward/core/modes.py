"""The namespace modes (README, "Modes"): the one definition every command and adapter imports.

`off`: meshward renders no filters for the namespace. An observation that reaches meshward from
an `off` namespace all the same (a node tap, a sidecar not yet re-rendered) is allowed and not
learned; a threat on it is still alerted (Engine._decide).
"""

MODES = ("off", "learn", "monitor", "enforce")
DEFAULT_MODE = "learn"
# the namespace name of "every namespace not set by name" (`meshward mode set '*' MODE`): stored
# beside the others, never a Kubernetes name; in a cluster the Namespace labels decide instead
EVERY_OTHER = "*"
