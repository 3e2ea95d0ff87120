"""gRPC (de)serialisers for meshward's servers (ext_authz Check, the ext_proc tap).

grpc.aio calls the request deserialiser outside the handler: a message upb cannot parse (bad
UTF-8, truncated bytes) would raise there, unhandled and uncounted. The tolerant deserialiser
hands the handler an `Undecodable` marker instead, so it counts, logs and answers the error
itself. Both deserialisers are built once per service, not per call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)


class Undecodable:
    """What a tolerant deserialiser hands over when the bytes are too large or not a message."""

    __slots__ = ("error", "kind", "size")

    def __init__(self, kind: str, error: str, size: int) -> None:
        self.kind = kind  # e.g. "undecodable-check", "oversized-message"
        self.error = error
        self.size = size


def tolerant_deserializer(
    message_class: type[M], what: str, max_bytes: int
) -> Callable[[bytes], M | Undecodable]:
    """`message_class.FromString`, but over `max_bytes` or on a DecodeError an Undecodable of
    kind `oversized-{what}` / `undecodable-{what}`."""
    parse = message_class.FromString
    oversized, undecodable = f"oversized-{what}", f"undecodable-{what}"

    def deserialize(data: bytes) -> M | Undecodable:
        if len(data) > max_bytes:
            return Undecodable(oversized, f"{len(data)} > {max_bytes} bytes", len(data))
        try:
            return parse(data)
        except DecodeError as exc:
            return Undecodable(undecodable, str(exc), len(data))

    return deserialize


def serialized(answer: bytes) -> bytes:
    """The serialiser for handlers that answer bytes they serialised (or cached) themselves."""
    return answer


def serialize(message: Message) -> bytes:
    """The serialiser for handlers that answer protobuf messages."""
    return message.SerializeToString()
