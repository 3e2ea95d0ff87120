"""`meshward mode get [NAMESPACE]` / `meshward mode set NAMESPACE MODE`.

A running `meshward serve` on the same database notices a change within its flush interval
(the store's modes_version counter), so this works while the server runs.
"""

from __future__ import annotations

import argparse

from meshward.app.audit import AuditLog, local_user
from meshward.app.commands import UsageError, readiness
from meshward.app.commands.offline import add_db_flag, store_for
from meshward.app.store import StoreError, default_path
from meshward.core.engine import EngineConfig
from meshward.core.modes import MODES
from meshward.core.names import is_kubernetes_name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mode", help="get or set a namespace's mode (" + ", ".join(MODES) + ")")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    get = actions.add_parser(
        "get", help="one namespace's mode, or every namespace set (`*`: all the others)"
    )
    get.add_argument("namespace", nargs="?", metavar="NAMESPACE")
    add_db_flag(get)
    get.set_defaults(func=run_get)
    put = actions.add_parser("set", help="set a namespace's mode")
    put.add_argument("namespace", metavar="NAMESPACE")
    put.add_argument("mode", choices=MODES, metavar="MODE", help=" | ".join(MODES))
    add_db_flag(put)
    put.set_defaults(func=run_set)
    readiness.register(actions)  # `mode readiness NS`: serve's enforce-readiness report


def _check(namespace: str) -> str:
    if not is_kubernetes_name(namespace):
        raise UsageError(f"{namespace!r} is not a Kubernetes namespace name")
    return namespace


def run_get(args: argparse.Namespace) -> int:
    default = EngineConfig().default_mode
    with store_for(args.db, create=False) as store:
        modes = store.modes()
    if args.namespace is not None:
        print(modes.get(_check(args.namespace), default))
        return 0
    for ns, mode in sorted(modes.items()):
        print(f"{ns}\t{mode}")
    print(f"*\t{default}")  # every namespace not listed
    return 0


def run_set(args: argparse.Namespace) -> int:
    ns = _check(args.namespace)
    with store_for(args.db) as store:
        before = store.modes().get(ns, EngineConfig().default_mode)
        try:
            store.set_mode(ns, args.mode)
        except (StoreError, ValueError) as exc:
            raise UsageError(str(exc)) from exc
    AuditLog.beside(args.db or default_path()).record(
        "mode.set", local_user(), ns, before, args.mode, via="cli", peer="local"
    )
    print(f"{ns}: {args.mode} (was {before})")
    return 0
