"""Validating objects against third-party CRDs' openAPIV3Schema (../shared/data: Istio, Linkerd),
as strictly as the API server's pruning: a field the schema does not declare is an error."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ISTIO_CRDS = SHARED_DATA / "istio" / "crds.yaml"
LINKERD_CRDS = SHARED_DATA / "linkerd" / "crds.yaml"
Validators = dict[tuple[str, str], Any]


def _closed(schema: Any) -> Any:
    """Kubernetes prunes fields a structural schema does not declare: treat them as errors."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def crd_validators(path: Path) -> Validators:
    """(apiVersion, kind) -> a validator for each served version's openAPIV3Schema (the test
    is skipped where ../shared is not checked out)."""
    if not path.exists():
        pytest.skip(f"{path} missing (../shared is not checked out here)")
    out = {}
    for crd in yaml.safe_load_all(path.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            schema.setdefault("properties", {})
            # every object also has these (Kubernetes validates them, not the CRD)
            schema["properties"].update(
                apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
            )
            schema = _closed(schema)
            out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def check_object(validators: Validators, obj: dict[str, Any]) -> None:
    validator = validators[(obj["apiVersion"], obj["kind"])]
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    assert not errors, errors
