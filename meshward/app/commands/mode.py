"""`meshward mode get [NAMESPACE]` / `meshward mode set NAMESPACE MODE`.

`*` is every namespace not set by name, in both: `mode get` lists it last, `mode set '*' MODE`
changes it. A running `meshward serve` on the same database notices a change within its flush
interval (the store's modes_version counter), so this works while the server runs.
"""

from __future__ import annotations

import argparse

from meshward.app.audit import AuditLog, local_user
from meshward.app.commands import UsageError, readiness
from meshward.app.commands.offline import add_db_flag, store_for
from meshward.app.store import SqliteStore, StoreError, default_path
from meshward.core.engine import EngineConfig
from meshward.core.modes import EVERY_OTHER, MODES, settable


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mode", help="get or set a namespace's mode (" + ", ".join(MODES) + ")")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    get = actions.add_parser(
        "get", help="one namespace's mode, or every namespace set and `*` (all the others)"
    )
    get.add_argument(
        "namespace", nargs="?", metavar="NAMESPACE", help="a namespace, or '*' (quoted)"
    )
    add_db_flag(get)
    get.set_defaults(func=run_get)
    put = actions.add_parser(
        "set", help="set a namespace's mode, or with `*` every namespace not set by name"
    )
    put.add_argument("namespace", metavar="NAMESPACE", help="a namespace, or '*' (quoted)")
    put.add_argument("mode", choices=MODES, metavar="MODE", help=" | ".join(MODES))
    add_db_flag(put)
    put.set_defaults(func=run_set)
    readiness.register(actions)  # `mode readiness NS`: serve's enforce-readiness report


def _check(namespace: str) -> str:
    if not settable(namespace):
        raise UsageError(
            f"{namespace!r} is not a Kubernetes namespace name (or '*', every namespace not set)"
        )
    return namespace


def _modes(store: SqliteStore) -> tuple[dict[str, str], str]:
    """The namespaces set by name, and the mode of all the others."""
    modes = store.modes()
    default = modes.pop(EVERY_OTHER, EngineConfig().default_mode)
    return modes, default


def run_get(args: argparse.Namespace) -> int:
    with store_for(args.db, create=False) as store:
        modes, default = _modes(store)
    if args.namespace is not None:
        ns = _check(args.namespace)
        print(default if ns == EVERY_OTHER else modes.get(ns, default))
        return 0
    for ns, mode in sorted(modes.items()):
        print(f"{ns}\t{mode}")
    print(f"{EVERY_OTHER}\t{default}")  # every namespace not listed
    return 0


def run_set(args: argparse.Namespace) -> int:
    ns = _check(args.namespace)
    with store_for(args.db) as store:
        modes, default = _modes(store)
        before = default if ns == EVERY_OTHER else modes.get(ns, default)
        try:
            store.set_mode(ns, args.mode)
        except (StoreError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    AuditLog.beside(args.db or default_path()).record(
        "mode.set", local_user(), ns, before, args.mode, via="cli", peer="local"
    )
    if ns == EVERY_OTHER:
        kept = sorted(modes)
        named = f"; set by name, unchanged: {', '.join(kept[:5])}" if kept else ""
        named += f" and {len(kept) - 5} more" if len(kept) > 5 else ""
        print(f"*: {args.mode} (was {before}): every namespace not set by name{named}")
    else:
        print(f"{ns}: {args.mode} (was {before})")
    return 0
