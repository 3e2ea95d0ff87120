"""The engine settings every judging command takes: threat sensitivity and deny threshold."""

from __future__ import annotations

import argparse
import os

from meshward.app.commands import UsageError
from meshward.core.allowlist import Limits
from meshward.core.engine import EngineConfig


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threat-level",
        type=int,
        choices=(1, 2, 3),
        help="threat detection sensitivity, like OWASP CRS paranoia levels: 1 (default) finds "
        "less and is quiet, 3 finds more (env MESHWARD_THREAT_LEVEL)",
    )
    parser.add_argument(
        "--deny-threshold",
        type=float,
        metavar="SCORE",
        help="enforce denies at or above this score, 0 < SCORE <= 1 (env "
        "MESHWARD_DENY_THRESHOLD, default 0.5)",
    )
    parser.add_argument(
        "--max-destinations",
        type=int,
        metavar="N",
        help="services learning may create a profile for (env MESHWARD_MAX_DESTINATIONS, "
        f"default {Limits().max_destinations}); past it a new destination is judged but not "
        "learned, counted in meshward_refused_total and logged",
    )


def engine_config(args: argparse.Namespace, **overrides: object) -> EngineConfig:
    """EngineConfig from the flags, else the environment, else the defaults."""
    defaults = EngineConfig()
    level = args.threat_level or _env("MESHWARD_THREAT_LEVEL", int, defaults.threat_level)
    deny = args.deny_threshold
    if deny is None:
        deny = _env("MESHWARD_DENY_THRESHOLD", float, defaults.deny_threshold)
    if level not in (1, 2, 3):
        raise UsageError(f"threat level must be 1, 2 or 3, not {level}")
    if not 0 < deny <= 1:
        raise UsageError(f"deny threshold must be in (0, 1], not {deny}")
    most = getattr(args, "max_destinations", None)
    if most is None:
        most = _env("MESHWARD_MAX_DESTINATIONS", int, Limits().max_destinations)
    if not isinstance(most, int) or most < 1:
        raise UsageError(f"max destinations must be at least 1, not {most}")
    limits = Limits(max_destinations=most)
    return EngineConfig(threat_level=level, deny_threshold=deny, limits=limits, **overrides)  # type: ignore[arg-type]


def _env(name: str, kind: type, default: object) -> object:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise UsageError(f"${name}={raw!r} is not a valid {kind.__name__}") from None
