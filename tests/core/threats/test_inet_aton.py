"""The core's pure inet_aton (no socket module in the core) against the C library's."""

from __future__ import annotations

import random
import socket
import struct

from meshward.core.threats.detector import _inet_aton


def _part(rnd: random.Random) -> str:
    kind = rnd.randrange(5)
    if kind == 0:
        digits = "".join(rnd.choice("0123456789abcdefG") for _ in range(rnd.randrange(9)))
        return rnd.choice(["0x", "0X"]) + digits
    if kind == 1:
        return "0" + "".join(rnd.choice("0123456789") for _ in range(rnd.randrange(12)))
    if kind == 2:
        return ""
    return str(rnd.choice([rnd.randrange(256), rnd.randrange(1 << 32), rnd.randrange(10**12), 169]))


def test_same_answers_as_libc_inet_aton() -> None:
    rnd = random.Random(7)
    for _ in range(20_000):
        token = ".".join(_part(rnd) for _ in range(rnd.randrange(1, 6)))
        try:
            want = struct.unpack("!I", socket.inet_aton(token))[0]
        except (OSError, ValueError):
            want = None
        assert _inet_aton(token) == want, token
