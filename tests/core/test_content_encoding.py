"""Compressed bodies are inspected as plaintext; bombs, corrupt data and unknown codings are
bounded and reported as partly inspected, never a way around inspection."""

from __future__ import annotations

import gzip
import time
import zlib

from meshward.core.bodies import decode_content
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Identity, Observation

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


def _grpc(messages: list[bytes], encoding: str, compressed: bool = True) -> Observation:
    framed = b""
    for m in messages:
        payload = (
            gzip.compress(m)
            if compressed and encoding == "gzip"
            else (zlib.compress(m) if compressed else m)
        )
        framed += bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload
    return Observation(
        "extauthz",
        source=Identity("shop", "web"),
        destination=Identity("shop", "orders"),
        method="POST",
        path="/shop.Orders/Create",
        protocol="grpc",
        headers=[("content-type", "application/grpc"), ("grpc-encoding", encoding)],
        body=framed,
        body_size=len(framed),
    )


def _proto_string(field: int, text: bytes) -> bytes:
    return bytes([field << 3 | 2, len(text)]) + text


def test_compressed_grpc_messages_are_inspected() -> None:
    """grpc-go, grpc-java and grpcio decompress messages flagged compressed (grpc-encoding):
    meshward saw only the compressed bytes, unflagged."""
    engine = Engine(config=EngineConfig())
    attack = _proto_string(1, b"x' UNION SELECT password FROM users --")
    for encoding in ("gzip", "deflate"):
        v = engine.evaluate(_grpc([_proto_string(1, b"ok"), attack], encoding), mode="monitor")
        assert "SQL.Injection" in {t.name for t in v.threats}, encoding
        assert not v.body_partly_inspected
    v = engine.evaluate(_grpc([attack], "gzip", compressed=False), mode="monitor")
    assert "SQL.Injection" in {t.name for t in v.threats}  # an uncompressed message stays read


def test_grpc_message_bombs_and_unknown_encodings_are_partial() -> None:
    engine = Engine(config=EngineConfig(max_body=1 << 20))
    start = time.monotonic()
    v = engine.evaluate(_grpc([b"\0" * (64 << 20)], "gzip"), mode="monitor")
    assert v.body_partly_inspected and time.monotonic() - start < 2.0
    v = engine.evaluate(_grpc([b"abc"], "snappy"), mode="monitor")
    assert v.body_partly_inspected
