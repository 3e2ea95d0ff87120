"""The allowlist exports to native policy, as the CLI, the API and the dashboard hand them out.

`meshward allowlist export --format authorizationpolicy|linkerd|openapi`, `GET
/api/v1/exports/{format}` and the dashboard's download all come here: one YAML stream (one
document per object), headed by comment lines naming what the export could not carry
(meshward.core.exports.Note), so a reviewer sees it before applying anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from meshward.core.engine import Engine
from meshward.core.exports import Export
from meshward.formats.openapi import openapi_documents
from meshward.istio.authzexport import authorization_policies
from meshward.linkerd.policyexport import linkerd_policy

FORMATS = ("authorizationpolicy", "linkerd", "openapi")


class _Dumper(yaml.SafeDumper):
    """Every object written out in full: no `&id001` anchors where two schemas are alike."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


MAX_NOTES = 200  # comment lines at the head of an export; the rest are counted


@dataclass(frozen=True)
class ExportOptions:
    trust_domain: str = "cluster.local"
    selector_label: str = "app"  # the pod label holding the workload's name
    port: str = "http"  # Linkerd Server port (name or number)
    path_templates: bool = True  # Istio 1.22+ path templates, else prefixes


def export(
    engine: Engine, fmt: str, destination: str | None = None, options: ExportOptions | None = None
) -> Export:
    """The export of one format (ValueError for an unknown one, KeyError for an unknown
    destination)."""
    o = options or ExportOptions()
    allowlist, mode_of = engine.allowlist, engine.mode_of
    if fmt == "authorizationpolicy":
        return authorization_policies(
            allowlist,
            mode_of,
            trust_domain=o.trust_domain,
            selector_label=o.selector_label,
            path_templates=o.path_templates,
            destination=destination,
        )
    if fmt == "linkerd":
        return linkerd_policy(
            allowlist,
            mode_of,
            trust_domain=o.trust_domain,
            selector_label=o.selector_label,
            port=o.port,
            destination=destination,
        )
    if fmt == "openapi":
        return openapi_documents(allowlist, destination)
    raise ValueError(f"unknown export format {fmt!r} ({', '.join(FORMATS)})")


def _comment(text: str) -> str:
    """One comment line, whatever a learned name holds (no line breaks, printable)."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return f"# {clean}\n"


def render(result: Export, fmt: str) -> str:
    """A YAML stream: notes as comments, then one document per object."""
    head = [f"meshward allowlist export --format {fmt}: {len(result.objects)} objects"]
    if result.notes:
        head.append(f"not carried by this export ({len(result.notes)}); meshward still checks:")
        head += [f"  {n.line()}" for n in result.notes[:MAX_NOTES]]
        if len(result.notes) > MAX_NOTES:
            head.append(f"  ... and {len(result.notes) - MAX_NOTES} more")
    out = "".join(_comment(line) for line in head)
    docs: list[Any] = result.objects
    if docs:
        out += yaml.dump_all(
            docs,
            Dumper=_Dumper,
            sort_keys=False,
            allow_unicode=True,
            width=100,
            explicit_start=True,
        )
    return out
