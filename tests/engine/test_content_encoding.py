"""Compressed bodies are inspected as plaintext; bombs, corrupt data and unknown codings are
bounded and reported as partly inspected, never a way around inspection."""

from __future__ import annotations

import gzip
import time
import zlib

from meshward.bodies import decode_content
from meshward.engine import Engine, EngineConfig
from meshward.observation import Identity, Observation

ATTACK = b'{"name": "x\' UNION SELECT password FROM users --", "qty": 1}'


def post(body: bytes, encoding: str) -> Observation:
    return Observation(
        "extauthz",
        source=Identity("shop", "web"),
        destination=Identity("shop", "api"),
        method="POST",
        path="/items",
        headers=[("content-type", "application/json"), ("content-encoding", encoding)],
        body=body,
        body_size=len(body),
    )


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


def test_codings_are_undone() -> None:
    assert decode_content("gzip", gzip.compress(ATTACK)) == (ATTACK, False)
    assert decode_content("x-gzip", gzip.compress(ATTACK)) == (ATTACK, False)
    assert decode_content("deflate", zlib.compress(ATTACK)) == (ATTACK, False)
    assert decode_content("deflate", raw_deflate(ATTACK)) == (ATTACK, False)
    twice = gzip.compress(zlib.compress(ATTACK))
    assert decode_content("deflate, gzip", twice) == (ATTACK, False)
    assert decode_content("identity", ATTACK) == (ATTACK, False)


def test_unknown_corrupt_and_bombs_are_partial() -> None:
    assert decode_content("br", b"\x1b\x00") == (b"\x1b\x00", True)
    assert decode_content("gzip", b"not gzip at all") == (b"not gzip at all", True)
    assert decode_content("gzip", gzip.compress(ATTACK)[:20])[1] is True
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in about 64 KB
    start = time.perf_counter()
    out, partial = decode_content("gzip", bomb, max_bytes=1 << 20)
    assert partial and len(out) == 1 << 20
    assert time.perf_counter() - start < 2


def test_engine_finds_threats_inside_compressed_bodies() -> None:
    engine = Engine(config=EngineConfig())
    for encoding, body in (
        ("gzip", gzip.compress(ATTACK)),
        ("deflate", raw_deflate(ATTACK)),
    ):
        v = engine.evaluate(post(body, encoding), mode="enforce")
        assert v.verdict == "deny", (encoding, v)
        assert any(t.name == "SQL.Injection" for t in v.threats), (encoding, v)
        assert not v.body_partly_inspected


def test_engine_says_when_a_body_could_not_be_read() -> None:
    engine = Engine(config=EngineConfig())
    v = engine.evaluate(post(b"\x1b\x07\x00\xf8", "br"), mode="monitor")
    assert v.body_partly_inspected
    bomb = gzip.compress(b'{"a": "' + b"x" * (8 << 20) + b'"}')
    v = engine.evaluate(post(bomb, "gzip"), mode="monitor")
    assert v.body_partly_inspected
