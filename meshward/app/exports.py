"""The allowlist exports to native policy, as the CLI, the API and the dashboard hand them out.

`meshward allowlist export --format authorizationpolicy|linkerd|openapi`, `GET
/api/v1/exports/{format}` and the dashboard's download all come here: one YAML stream (one
document per object), headed by comment lines naming what the export could not carry
(meshward.core.exports.Note), so a reviewer sees it before applying anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshward.core.allowlist import DOC_VERSION, Allowlist
from meshward.core.engine import Engine
from meshward.core.exports import Export, ModeOf
from meshward.formats import yamlout
from meshward.formats.openapi import openapi_documents
from meshward.istio.authzexport import authorization_policies
from meshward.linkerd.policyexport import linkerd_policy

FORMATS = ("authorizationpolicy", "linkerd", "openapi")


MAX_NOTES = 200  # comment lines at the head of an export; the rest are counted


@dataclass(frozen=True)
class ExportOptions:
    trust_domain: str = "cluster.local"
    selector_label: str = "app"  # the pod label holding the workload's name
    port: str = "http"  # Linkerd Server port (name or number)
    path_templates: bool = True  # Istio 1.22+ path templates, else prefixes


def export(
    allowlist: Allowlist,
    mode_of: ModeOf,
    fmt: str,
    destination: str | None = None,
    options: ExportOptions | None = None,
) -> Export:
    """The export of one format (ValueError for an unknown one, KeyError for an unknown
    destination)."""
    o = options or ExportOptions()
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


def export_engine(
    engine: Engine, fmt: str, destination: str | None = None, options: ExportOptions | None = None
) -> Export:
    """The export of what an engine holds (the CLI's: no other thread touches it)."""
    return export(engine.allowlist, engine.mode_of, fmt, destination, options)


@dataclass(frozen=True)
class Snapshot:
    """What an export reads of serve's engine, copied on its loop (the engine is the loop's
    alone): the allowlist document (of one destination or all) and the modes. The export and
    its rendering, seconds of CPU for thousands of services, then run on another thread."""

    doc: dict[str, Any]
    modes: dict[str, str]
    default_mode: str

    @classmethod
    def of(cls, engine: Engine, destination: str | None = None) -> Snapshot:
        """KeyError for an unknown destination."""
        if destination is None:
            doc = engine.allowlist.export_doc()
        else:
            profile = engine.allowlist.get(destination)
            if profile is None:
                raise KeyError(destination)
            doc = {"version": DOC_VERSION, "services": [profile.to_doc()]}
        return cls(doc, engine.modes(), engine.config.default_mode)

    def mode_of(self, namespace: str) -> str:
        return self.modes.get(namespace or "default", self.default_mode)  # as Engine.mode_of

    def render(self, fmt: str, destination: str | None, options: ExportOptions) -> tuple[str, int]:
        """The YAML stream and the number of notes (off the loop: touches only the copy)."""
        allowlist = Allowlist()
        allowlist.import_doc(self.doc)
        result = export(allowlist, self.mode_of, fmt, destination, options)
        return render(result, fmt), len(result.notes)


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
        out += yamlout.dump_all(docs)
    return out
