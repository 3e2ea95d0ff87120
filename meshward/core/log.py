"""Structured log events: a message plus key/value fields, through stdlib logging.

The core never configures handlers or writes anywhere itself; the app's
`meshward.runtime.jsonlog.setup` turns these records into JSON lines on stderr.
"""

from __future__ import annotations

import logging


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one structured event: `msg` plus key/value fields."""
    logger.log(level, msg, extra={"fields": fields})
