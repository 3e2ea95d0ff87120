"""The one YAML writer: libyaml's emitter where PyYAML has it, output read back equal and the
same bytes as the pure-Python emitter it replaced."""

from __future__ import annotations

from typing import Any

import yaml

from meshward.app.commands.allowlist import dump
from meshward.app.exports import export_engine, render
from meshward.formats import yamlout
from tests.support.learned import sample_engine

AWKWARD: dict[str, Any] = {
    "destination": "shop/api",
    "endpoints": [
        {"method": "GET", "path": "/users/{int}", "query": {"*": [], "q": ["word", "int"]}},
        {"path": "/naïve/日本", "note": "x" * 250, "yes": "yes", "null": None, "colon": "a: b"},
        {"lines": "one\ntwo\n", "quote": "'\"#&*!|>%@`", "num": "0012", "float": 1.5},
    ],
}


def _pure(data: Any, flat_lists: bool) -> str:
    """The same representers on PyYAML's pure-Python emitter."""

    class Pure(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    if flat_lists:
        Pure.add_representer(list, yamlout.FlatListDumper.yaml_representers[list])
    out: str = yaml.dump(data, Dumper=Pure, sort_keys=False, allow_unicode=True, width=100)
    return out


def test_the_c_emitter_is_used_where_pyyaml_has_it() -> None:
    assert bool(yaml.__with_libyaml__) == yamlout.C_EMITTER
    assert issubclass(yamlout.Dumper, yaml.CSafeDumper if yaml.__with_libyaml__ else object)


def test_allowlist_yaml_reads_back_equal_and_is_the_pure_emitters_bytes() -> None:
    doc = sample_engine().allowlist.export_doc()
    for data in (doc, AWKWARD):
        text = dump(data, "yaml")
        assert yaml.safe_load(text) == data
        assert text == _pure(data, flat_lists=True)
    assert "[" in dump(AWKWARD, "yaml")  # short scalar lists stay inline


def test_exports_read_back_equal_without_anchors() -> None:
    engine = sample_engine()
    for fmt in ("authorizationpolicy", "openapi"):
        result = export_engine(engine, fmt)
        text = render(result, fmt)
        assert list(yaml.safe_load_all(text)) == result.objects
        assert "&id" not in text and "*id" not in text
    shared = {"a": [1, 2]}
    text = yamlout.dump_all([{"x": shared, "y": shared}])
    assert text.startswith("---") and "&" not in text
    assert text == "---\n" + _pure({"x": shared, "y": shared}, flat_lists=False)
