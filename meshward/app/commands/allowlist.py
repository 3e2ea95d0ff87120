"""`meshward allowlist show|export|import`: review and edit the learned allowlists.

export writes a stable, diffable document (services and rules sorted; YAML by default, JSON with
--format json); import reads one back (YAML or JSON), merged into the stored allowlists or, with
--replace, instead of them. A human edits rules in that document: add, remove or widen one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshward.app.audit import AuditLog, local_user
from meshward.app.commands import UsageError, exportflags, plural, utc, write_output
from meshward.app.commands.offline import add_db_flag, close_flusher, open_flusher
from meshward.app.store import default_path
from meshward.core import values
from meshward.core.allowlist import old_class_names
from meshward.core.engine import Engine
from meshward.formats import yamlout


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("allowlist", help="show, export or import the learned allowlists")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    show = actions.add_parser(
        "show",
        help="a table per service on a terminal, YAML otherwise (times as UTC dates)",
    )
    show.add_argument("--destination", metavar="SERVICE", help="only this destination (ns/name)")
    add_db_flag(show)
    show.set_defaults(func=run_show)

    export = actions.add_parser(
        "export",
        help="write the allowlists as YAML or JSON, or as Istio, Linkerd or OpenAPI documents",
    )
    export.add_argument(
        "--format",
        choices=("yaml", "json", *exportflags.FORMATS),
        default="yaml",
        help="yaml, json: the allowlist document (import reads it back); authorizationpolicy, "
        "linkerd, openapi: as Istio, Linkerd or OpenAPI documents (docs/exports.md)",
    )
    exportflags.add_flags(export)
    export.add_argument(
        "--stats",
        action="store_true",
        help="include counts and first/last-seen times (they change with every run: noisier diffs)",
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    add_db_flag(export)
    export.set_defaults(func=run_export)

    imp = actions.add_parser("import", help="read allowlists from a YAML or JSON document")
    imp.add_argument("file", metavar="FILE", help="a document `allowlist export` wrote (edited)")
    imp.add_argument(
        "--replace",
        action="store_true",
        help="replace all stored allowlists (default: merge into them)",
    )
    add_db_flag(imp)
    imp.set_defaults(func=run_import)


def dump(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return yamlout.dump(doc, flat_lists=True)


def _export(engine: Engine, stats: bool, destination: str | None = None) -> dict[str, Any]:
    doc = engine.allowlist.export_doc(stats=stats)
    if destination is not None:
        doc["services"] = [s for s in doc["services"] if s.get("destination") == destination]
        if not doc["services"]:
            raise UsageError(f"no allowlist for destination {destination!r}")
    return doc


def run_export(args: argparse.Namespace) -> int:
    if args.format in exportflags.FORMATS:
        return exportflags.run(args)
    flusher = open_flusher(args.db, read_only=True, create=False, threats=False)
    try:
        text = dump(_export(flusher.engine, args.stats, args.destination), args.format)
    finally:
        close_flusher(flusher)
    write_output(args.output, text)
    return 0


def _iso(ts: object) -> object:
    """An epoch time as an ISO 8601 date (UTC); anything else as it is."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts <= 0:
        return ts
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def with_dates(doc: Any) -> Any:
    """The document with every first_seen/last_seen as a date: `show` is read by people
    (`export` keeps the epoch seconds a program diffs and imports)."""
    if isinstance(doc, dict):
        return {
            k: _iso(v) if k in ("first_seen", "last_seen") else with_dates(v)
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [with_dates(x) for x in doc]
    return doc


def _fields(what: str, spec: object) -> str:
    if not isinstance(spec, dict) or not spec:
        return ""
    shown = ", ".join(
        f"{k} {'|'.join(v)}" if isinstance(v, list) else str(k) for k, v in spec.items()
    )
    return f"{what} {shown}"


def _callers(sources: object, most: int = 3) -> str:
    names = [str(n) for n in sources] if isinstance(sources, (dict, list)) else []
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f"from {', '.join(names[:most])}{more}" if names else ""


def _span(first: object, last: object) -> str:
    a, b = utc(first), utc(last)
    if not a or not b or a == b:
        return a or b
    return f"{a} to {b[11:] if a[:10] == b[:10] else b}"  # one day: the date once


def service_heading(svc: dict[str, Any]) -> str:
    return (
        f"[bold]{escape(str(svc.get('destination', '')))}[/]  "
        f"{plural(len(svc.get('endpoints', [])), 'rule')}, "
        f"{plural(int(svc.get('count') or 0), 'call')}, "
        f"{plural(len(svc.get('sources') or {}), 'caller')}, "
        f"seen {_span(svc.get('first_seen'), svc.get('last_seen'))} UTC"
    )


def service_table(svc: dict[str, Any]) -> Table:
    """One service's rules in three columns that fit 80: the rule with its callers and its
    query and body fields under it, its calls, when it was last seen."""
    rules = svc.get("endpoints", [])
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("rule", overflow="fold")
    table.add_column("calls", justify="right", no_wrap=True)
    table.add_column("last seen (UTC)", no_wrap=True)
    for rule in rules:
        lines = [f"[bold]{escape(rule.get('method', ''))}[/] {escape(rule.get('path', ''))}"]
        details = [_callers(rule.get("sources"))]
        details += [_fields(what, rule.get(what)) for what in ("query", "body")]
        lines += [f"  [dim]{escape(d)}[/]" for d in details if d]
        table.add_row("\n".join(lines), str(rule.get("count", "")), utc(rule.get("last_seen")))
    return table


def run_show(args: argparse.Namespace) -> int:
    flusher = open_flusher(args.db, read_only=True, create=False, threats=False)
    try:
        doc = _export(flusher.engine, stats=True, destination=args.destination)
    finally:
        close_flusher(flusher)
    if not sys.stdout.isatty():
        sys.stdout.write(dump(with_dates(doc), "yaml"))
        return 0
    console = Console(highlight=False)
    services = doc["services"]
    rules = sum(len(s.get("endpoints", [])) for s in services)
    console.print(
        f"meshward allowlists: {plural(len(services), 'service')}, {plural(rules, 'rule')}"
    )
    for svc in services:
        console.print()
        console.print(service_heading(svc))
        console.print(service_table(svc))
    return 0


def _yaml_problem(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().split("\n")[0]
    return f"{problem} (line {mark.line + 1})" if mark is not None else str(problem)


def run_import(args: argparse.Namespace) -> int:
    try:
        with open(args.file, encoding="utf-8") as f:
            doc = yaml.safe_load(f)  # JSON is YAML too
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{args.file}: not YAML or JSON: {_yaml_problem(exc)}") from exc
    old = old_class_names(doc)
    if old:
        renamed = ", ".join(f"{n} as {values.OLD_NAMES[n]}" for n in sorted(old))
        print(
            f"meshward allowlist: note: {args.file} uses old value class names, read {renamed}; "
            "they are deprecated: `meshward allowlist export` writes the current ones",
            file=sys.stderr,
        )
    flusher = open_flusher(args.db, threats=False)
    engine = flusher.engine
    before = {"services": len(engine.allowlist.services), "rules": engine.allowlist.rule_count()}
    try:
        try:
            touched = engine.allowlist.import_doc(doc, replace=args.replace)
        except ValueError as exc:
            raise UsageError(f"{args.file}: {exc}") from exc
        flusher.save_allowlist(touched, replace=args.replace)
        rules = sum(engine.allowlist.services[d].endpoints for d in set(touched))
        total = (len(engine.allowlist.services), engine.allowlist.rule_count())
    finally:
        close_flusher(flusher)
    AuditLog.beside(args.db or default_path()).record(
        "allowlist.replace" if args.replace else "allowlist.import",
        local_user(),
        os.path.abspath(args.file),
        before,
        {"services": total[0], "rules": total[1], "touched": len(set(touched))},
        via="cli",
        peer="local",
    )
    how = "replaced the stored allowlists with" if args.replace else "merged"
    print(
        f"{how} {len(set(touched))} services ({rules} rules) from {args.file}; "
        f"allowlist now: {total[0]} services, {total[1]} rules"
    )
    return 0
