"""YAML out, one way for every command and export: libyaml's C emitter when PyYAML was built
with it (`CSafeDumper`: a 500-service allowlist export went from seconds to a fraction through
it, see bench/yaml_export.py), else the pure-Python `SafeDumper`; the output is the same YAML."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

_Base: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
C_EMITTER = _Base is not yaml.SafeDumper  # whether libyaml is there (benchmarks report it)


class Dumper(_Base):  # type: ignore[valid-type,misc]
    """Block style, every object written out in full: no `&id001` anchors where two parts
    are alike (a reviewer reads each in place)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class FlatListDumper(Dumper):
    """Block style, except short lists of scalars inline (`[int, uuid]`): easy to read and
    diff (allowlists)."""


def _list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flat = all(isinstance(x, (str, int, float, bool)) or x is None for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


FlatListDumper.add_representer(list, _list)


def _dumper(flat_lists: bool) -> type[yaml.SafeDumper]:
    return FlatListDumper if flat_lists else Dumper


def dump(data: Any, *, flat_lists: bool = False) -> str:
    """One document, keys in their order, UTF-8 kept as it is."""
    out: str = yaml.dump(
        data, Dumper=_dumper(flat_lists), sort_keys=False, allow_unicode=True, width=100
    )
    return out


def dump_all(docs: Iterable[Any], *, flat_lists: bool = False) -> str:
    """A stream of documents, each started by `---`."""
    out: str = yaml.dump_all(
        docs,
        Dumper=_dumper(flat_lists),
        sort_keys=False,
        allow_unicode=True,
        width=100,
        explicit_start=True,
    )
    return out
