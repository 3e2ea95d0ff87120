"""`meshward allowlist export --format authorizationpolicy|linkerd|openapi`: native policy.

The flags and the run of the three native exports (meshward.app.exports); the YAML and JSON
allowlist documents stay in `commands/allowlist.py`. What an export could not carry goes to the
output's head as comments and, counted, to stderr.
"""

from __future__ import annotations

import argparse
import re
import sys

from meshward.app.commands import UsageError, write_output
from meshward.app.commands.offline import close_flusher, open_flusher
from meshward.app.exports import FORMATS, ExportOptions, export_engine, render

__all__ = ["FORMATS", "add_flags", "run"]

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")  # as meshward.core.peer reads SPIFFE ids
# a label key: optional DNS-subdomain prefix and a name of 63 characters (Kubernetes)
_LABEL_KEY = re.compile(
    r"(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


def add_flags(export: argparse.ArgumentParser) -> None:
    export.add_argument(
        "--destination", metavar="NS/NAME", help="only this destination (default: all)"
    )
    export.add_argument(
        "--trust-domain",
        default="cluster.local",
        help="the mesh's trust domain for callers' identities (default cluster.local)",
    )
    export.add_argument(
        "--selector-label",
        default="app",
        metavar="KEY",
        help="the pod label whose value is the workload's name (default app)",
    )
    export.add_argument(
        "--port",
        default="http",
        help="linkerd: the Server's port, a name in the pod spec or a number (default http)",
    )
    export.add_argument(
        "--no-path-templates",
        action="store_true",
        help="authorizationpolicy: prefixes instead of {*}/{**} path templates (Istio < 1.22)",
    )


def _port_name(text: str) -> bool:
    """A container port name (IANA service name): 15 characters at most, a letter in it."""
    return bool(re.fullmatch(r"[a-z0-9](?:[-a-z0-9]{0,13}[a-z0-9])?", text)) and any(
        c.isalpha() for c in text
    )


def options(args: argparse.Namespace) -> ExportOptions:
    if not _TRUST_DOMAIN.fullmatch(args.trust_domain):
        raise UsageError(f"--trust-domain {args.trust_domain!r}: not a SPIFFE trust domain")
    if not _LABEL_KEY.fullmatch(args.selector_label):
        raise UsageError(f"--selector-label {args.selector_label!r}: not a label key")
    port = args.port
    if not (0 < int(port) < 65536 if port.isdigit() else _port_name(port)):
        raise UsageError(f"--port {port!r}: not a port number or a port name")
    return ExportOptions(
        trust_domain=args.trust_domain,
        selector_label=args.selector_label,
        port=port,
        path_templates=not args.no_path_templates,
    )


def run(args: argparse.Namespace) -> int:
    """Write one native export; the notes' count to stderr."""
    assert args.format in FORMATS
    opts = options(args)
    flusher = open_flusher(args.db, read_only=True, create=False, threats=False)
    try:
        try:
            result = export_engine(flusher.engine, args.format, args.destination, opts)
        except KeyError:
            raise UsageError(f"no allowlist for destination {args.destination!r}") from None
    finally:
        close_flusher(flusher)
    text = render(result, args.format)
    write_output(args.output, text)
    if result.notes:
        print(
            f"meshward allowlist export: {len(result.notes)} things not carried by "
            f"{args.format} (listed at the head of the output); meshward still checks them",
            file=sys.stderr,
        )
    return 0
