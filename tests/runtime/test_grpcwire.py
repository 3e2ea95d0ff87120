"""The tolerant gRPC deserialiser: bytes upb refuses, or too many, become a counted marker."""

from __future__ import annotations

from envoy.service.auth.v3 import external_auth_pb2

from meshward.runtime.grpcwire import Undecodable, serialize, serialized, tolerant_deserializer

CheckRequest = external_auth_pb2.CheckRequest


def test_a_message_decodes_and_round_trips() -> None:
    req = CheckRequest()
    req.attributes.request.http.path = "/cart"
    decode = tolerant_deserializer(CheckRequest, "check", 1024)
    got = decode(serialize(req))
    assert isinstance(got, CheckRequest) and got.attributes.request.http.path == "/cart"
    assert serialized(b"ready") == b"ready"


def test_oversized_and_undecodable_bytes_become_markers() -> None:
    decode = tolerant_deserializer(CheckRequest, "check", 16)
    big = decode(b"\x00" * 17)
    assert isinstance(big, Undecodable)
    assert (big.kind, big.size, big.error) == ("oversized-check", 17, "17 > 16 bytes")
    bad = decode(b"\x0a\x05ab")  # a length-delimited field cut short
    assert isinstance(bad, Undecodable) and (bad.kind, bad.size) == ("undecodable-check", 4)
