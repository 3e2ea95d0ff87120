"""Traffic for an API described by an OpenAPI 3 document: normal requests and deviations.

Normal requests follow the document (path parameters by type, query parameters, JSON bodies,
the callers in `x-callers`). Deviations break it in one way each: unknown endpoint, wrong
method, new parameter, injected JSON field, changed type, unknown caller.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshward.core.observation import Identity, Observation

SAMPLE = Path(__file__).with_name("sample_api.yaml")
WORDS = (
    "red",
    "blue",
    "green",
    "light",
    "dark",
    "summer",
    "winter",
    "classic",
    "sport",
    "slim",
    "wide",
    "soft",
    "warm",
    "cool",
    "new",
    "vintage",
    "cotton",
    "wool",
    "leather",
    "canvas",
    "running",
    "hiking",
    "casual",
    "formal",
)
NAMES = (
    "anna",
    "bob",
    "carla",
    "dmitri",
    "eva",
    "farid",
    "greta",
    "hugo",
    "ines",
    "jon",
    "kim",
    "lena",
    "marco",
    "nora",
    "omar",
)
STREETS = (
    "main",
    "high",
    "park",
    "oak",
    "pine",
    "elm",
    "maple",
    "cedar",
    "lake",
    "hill",
)
FILES = [
    f"{w}-{y}.{ext}" for w in WORDS for y in ("q1", "q2", "q3", "q4") for ext in ("pdf", "csv")
]
DEVIATIONS = (
    "unknown-endpoint",
    "wrong-method",
    "new-parameter",
    "injected-field",
    "changed-type",
    "unknown-caller",
    "path-word",
)
# words an attacker or a crawler tries where a path takes generated names (/files/{str})
PATH_WORDS = ("admin", "export", "config", "backup", "debug", "all", "latest", "index", "me")


@dataclass
class Operation:
    method: str
    path: str
    spec: dict[str, Any]
    callers: list[str]
    weight: float


def load(path: Path = SAMPLE) -> tuple[str, list[Operation]]:
    doc = yaml.safe_load(path.read_text())
    host = doc["servers"][0]["url"].split("://", 1)[1]
    ops = []
    for p, item in doc["paths"].items():
        for method, spec in item.items():
            ops.append(
                Operation(
                    method.upper(), p, spec, spec["x-callers"], float(spec.get("x-weight", 1))
                )
            )
    return host, ops


class Traffic:
    """Deterministic (seeded) generator of Observations for one OpenAPI document."""

    def __init__(self, seed: int = 1, path: Path = SAMPLE) -> None:
        self.rnd = random.Random(seed)
        self.host, self.ops = load(path)
        self.weights = [o.weight for o in self.ops]
        self.destination = Identity.parse(self.host)

    # ---- values from schemas
    def value(self, schema: dict[str, Any]) -> Any:
        r = self.rnd
        if "enum" in schema:
            return r.choice(schema["enum"])
        t = schema.get("type", "string")
        if t == "integer":
            return r.randint(schema.get("minimum", 1), schema.get("maximum", 99999))
        if t == "number":
            return round(r.uniform(1, 50), 2)
        if t == "boolean":
            return r.random() < 0.5
        if t == "array":
            return [self.value(schema["items"]) for _ in range(r.randint(1, 4))]
        if t == "object":
            out = {}
            required = set(schema.get("required", []))
            for name, sub in schema.get("properties", {}).items():
                if name in required or r.random() < 0.4:
                    out[name] = self.value(sub)
            return out
        fmt = schema.get("format") or schema.get("x-kind", "word")
        return self.string(fmt)

    def string(self, kind: str) -> str:
        r = self.rnd
        if kind == "uuid":
            return str(uuid.UUID(int=r.getrandbits(128)))
        if kind == "email":
            return f"{r.choice(NAMES)}.{r.choice(NAMES)}{r.randint(1, 99)}@example.com"
        if kind == "date":
            return f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        if kind == "objectid":
            return "".join(r.choice("0123456789abcdef") for _ in range(24))
        if kind == "digits":
            return str(r.randint(10000, 99999))
        if kind == "code":
            return "".join(r.choice(string.ascii_uppercase) for _ in range(6))
        if kind == "name":
            return f"{r.choice(NAMES).title()} {r.choice(NAMES).title()}"
        if kind == "street":
            return f"{r.randint(1, 200)} {r.choice(STREETS).title()} Street"
        if kind == "filename":
            return r.choice(FILES)
        if kind == "sentence":
            words = [r.choice(WORDS) for _ in range(r.randint(3, 12))]
            return " ".join(words).capitalize() + r.choice([".", "!", "", ", really."])
        if kind == "words":
            return " ".join(r.choice(WORDS) for _ in range(r.randint(1, 3)))
        return r.choice(WORDS)

    # ---- requests
    def normal(self) -> Observation:
        op = self.rnd.choices(self.ops, self.weights)[0]
        return self.request(op, self.rnd.choice(op.callers))

    def request(self, op: Operation, caller: str, body: Any = None) -> Observation:
        r = self.rnd
        path = op.path
        query = []
        for p in op.spec.get("parameters", []):
            v = self.value(p["schema"])
            if p["in"] == "path":
                path = path.replace("{" + p["name"] + "}", str(v))
            elif r.random() < 0.6:
                query.append((p["name"], str(v)))
        headers = [
            ("user-agent", "shop-client/1.4"),
            ("accept", "application/json"),
            ("x-request-id", str(uuid.UUID(int=r.getrandbits(128)))),
        ]
        data = b""
        rb = op.spec.get("requestBody")
        if rb is not None:
            if body is None:
                body = self.value(rb["content"]["application/json"]["schema"])
            data = json.dumps(body).encode()
            headers.append(("content-type", "application/json"))
            headers.append(("content-length", str(len(data))))
        from urllib.parse import urlencode

        return Observation(
            seen_by="file",
            source=Identity.parse(caller),
            destination=Identity.parse(self.host),
            method=op.method,
            authority=self.host,
            path=path,
            query=urlencode(query),
            headers=headers,
            body=data,
            body_size=len(data),
        )

    def deviation(self, kind: str) -> Observation:
        """A request that breaks the learned behaviour in exactly one way."""
        r = self.rnd
        if kind == "unknown-endpoint":
            obs = self.normal()
            obs.path = r.choice(
                ["/admin", "/internal/debug", "/actuator/env", "/v2/export", "/graphql", "/backup"]
            ) + r.choice(["", "/all", "/" + str(r.randint(1, 99))])
            return obs
        if kind == "wrong-method":
            op = r.choice(self.ops)
            obs = self.request(op, r.choice(op.callers))
            taken = {o.method for o in self.ops if o.path == op.path}
            obs.method = r.choice([m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in taken])
            return obs
        if kind == "new-parameter":
            obs = self.normal()
            extra = r.choice(["debug=1", "isAdmin=true", "callback=x", "fields=password", "raw=1"])
            obs.query = f"{obs.query}&{extra}" if obs.query else extra
            return obs
        with_body = [o for o in self.ops if "requestBody" in o.spec]
        if kind == "injected-field":
            op = r.choice(with_body)
            schema = op.spec["requestBody"]["content"]["application/json"]["schema"]
            body = self.value(schema)
            body[r.choice(["role", "isAdmin", "price_override", "userId", "__proto__"])] = "x"
            return self.request(op, r.choice(op.callers), body)
        if kind == "changed-type":
            op = r.choice(with_body)
            schema = op.spec["requestBody"]["content"]["application/json"]["schema"]
            body = self.value(schema)
            key = r.choice(list(body))
            v = body[key]
            body[key] = {"nested": True} if isinstance(v, str) else "a string now"
            return self.request(op, r.choice(op.callers), body)
        if kind == "path-word":
            generalised = [o for o in self.ops if o.path.startswith("/files/")]
            op = r.choice(generalised)
            obs = self.request(op, r.choice(op.callers))
            obs.path = "/files/" + r.choice(PATH_WORDS)
            return obs
        if kind == "unknown-caller":
            op = self.rnd.choices(self.ops, self.weights)[0]
            return self.request(op, r.choice(["shop/attacker", "default/curl", "evil/pod"]))
        raise ValueError(kind)
