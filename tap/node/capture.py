"""AF_PACKET capture sockets, opened inside a pod's network namespace, with kernel BPF filters.

A packet socket stays bound to the namespace it was created in, so each socket is created by a
short-lived thread that first joins the target namespace with setns(2) (Python 3.11 has no
os.setns; libc via ctypes) and then exits; the capture loop uses the socket from any thread.

The classic-BPF programs run in the kernel, so only the packets the tap needs ever reach Python:
on a pod's `lo` the proxy↔app TCP segments that carry data or SYN/FIN/RST (pure ACKs are
dropped: they carry nothing to reassemble), without loopback's duplicate outgoing copy.

A host interface can be put in promiscuous mode the way tcpdump does it: a PACKET_MR_PROMISC
membership of the socket, which the kernel counts per interface and drops when the socket
closes (a crashed agent leaves nothing behind, and other sniffers' memberships are kept). On a
Linux bridge this is what makes the bridge device hand up the frames it forwards between two
of its ports (pod to pod), not only those addressed to the host.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
CLONE_NEWNET = 0x40000000
PACKET_OUTGOING = 4
SNAPLEN = 262144  # loopback GSO/BIG TCP super-packets can exceed 64 KiB

# classic BPF opcodes (linux/filter.h)
_LD_W_ABS, _LD_H_ABS, _LD_B_ABS = 0x20, 0x28, 0x30
_LD_W_IND, _LD_H_IND, _LD_B_IND = 0x40, 0x48, 0x50
_LDX_B_MSH = 0xB1
_JEQ, _JSET, _JGT = 0x15, 0x45, 0x25
_RET_K = 0x06
_ALU_ADD_X, _ALU_AND_K, _ALU_RSH_K, _ALU_SUB_X = 0x0C, 0x54, 0x74, 0x1C
_ST, _LDX_MEM, _LDX_IMM, _TAX = 0x02, 0x61, 0x01, 0x07
_SKF_AD_PKTTYPE = 0xFFFFF000 + 4

Insn = tuple[int, int | str, int | str, int]  # (code, jt, jf, k); jumps may name labels


def assemble(program: list[Insn | str]) -> list[tuple[int, int, int, int]]:
    """Resolve label names (plain strings in the list) into relative jump offsets."""
    labels: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = []
    for pc, (code, jt, jf, k) in enumerate(insns):

        def rel(target: int | str, pc: int = pc) -> int:
            if isinstance(target, int):
                return target
            off = labels[target] - pc - 1
            if not 0 <= off <= 255:
                raise ValueError("BPF jump out of range")
            return off

        out.append((code, rel(jt), rel(jf), k))
    return out


def _from(family: int, via: Iterable[str], label: str) -> list[Insn | str]:
    """Drop a packet unless its source is one of `via` (of this family): the words of each
    address compared in place (IPv4 at 26, IPv6 at 22)."""
    addrs = [socket.inet_pton(family, a) for a in via if (":" in a) == (family == socket.AF_INET6)]
    src = 26 if family == socket.AF_INET else 22
    prog: list[Insn | str] = []
    for i, addr in enumerate(addrs):
        words = struct.unpack(f"!{len(addr) // 4}I", addr)
        miss = f"{label}-miss{i}"
        for n, w in enumerate(words):
            prog.append((_LD_W_ABS, 0, 0, src + 4 * n))
            prog.append((_JEQ, 0 if n < len(words) - 1 else label, miss, w))
        prog.append(miss)
    return [*prog, (_JEQ, "drop", "drop", 0), label]


def tcp_filter(ports: Iterable[int], *, include: bool, drop_outgoing: bool) -> list[Insn | str]:
    """TCP (IPv4, or IPv6 without extension headers) with data or SYN/FIN/RST; `include`: only
    these ports, else all but these. Jumps only go forward in classic BPF, so both address
    families end in the shared port checks with X = the IP header length."""
    ports = sorted(set(ports))
    on_match = "accept" if include else "drop"
    prog: list[Insn | str] = []
    if drop_outgoing:
        prog += [(_LD_W_ABS, 0, 0, _SKF_AD_PKTTYPE), (_JEQ, "drop", 0, PACKET_OUTGOING)]
    prog += [
        (_LD_H_ABS, 0, 0, 12),
        (_JEQ, 0, "not4", 0x0800),
        # IPv4
        (_LD_B_ABS, 0, 0, 23),
        (_JEQ, 0, "drop", 6),  # TCP
        (_LD_H_ABS, 0, 0, 20),
        (_JSET, "drop", 0, 0x1FFF),  # not a later fragment
        (_LDX_B_MSH, 0, 0, 14),  # X = IP header length
        (_LD_B_IND, 0, 0, 14 + 13),
        (_JSET, "ports", 0, 0x07),  # SYN/FIN/RST: keep
        # payload length = ip_len - ihl - tcp header length; drop pure ACKs
        (_LD_B_IND, 0, 0, 14 + 12),
        (_ALU_AND_K, 0, 0, 0xF0),
        (_ALU_RSH_K, 0, 0, 2),
        (_ALU_ADD_X, 0, 0, 0),
        (_ST, 0, 0, 0),  # M[0] = ihl + thl
        (_LD_H_ABS, 0, 0, 16),
        (_LDX_MEM, 0, 0, 0),
        (_ALU_SUB_X, 0, 0, 0),
        (_JEQ, "drop", 0, 0),
        (_LDX_B_MSH, 0, 0, 14),
        (_JEQ, "ports", "ports", 0),
        "not4",
        (_JEQ, 0, "drop", 0x86DD),
        # IPv6: next header TCP right after the fixed 40-byte header
        (_LD_B_ABS, 0, 0, 20),
        (_JEQ, 0, "drop", 6),
        (_LD_B_ABS, 0, 0, 14 + 40 + 13),
        (_JSET, "v6ports", 0, 0x07),
        (_LD_B_ABS, 0, 0, 14 + 40 + 12),
        (_ALU_AND_K, 0, 0, 0xF0),
        (_ALU_RSH_K, 0, 0, 2),
        (_TAX, 0, 0, 0),
        (_LD_H_ABS, 0, 0, 18),
        (_ALU_SUB_X, 0, 0, 0),  # payload - thl
        (_JEQ, "drop", 0, 0),
        "v6ports",
        (_LDX_IMM, 0, 0, 40),
        "ports",
        (_LD_H_IND, 0, 0, 14),  # source port
    ]
    prog += [(_JEQ, on_match, 0, p) for p in ports]
    prog.append((_LD_H_IND, 0, 0, 16))  # destination port
    prog += [(_JEQ, on_match, 0, p) for p in ports]
    prog.append((_RET_K, 0, 0, 0 if include else SNAPLEN))
    prog += ["accept", (_RET_K, 0, 0, SNAPLEN), "drop", (_RET_K, 0, 0, 0)]
    return prog


def _payload_starts(
    offset_at: int,
    payload_at: int,
    words: Iterable[bytes],
    masked: Iterable[tuple[int, int]],
    ind: bool,
) -> list[Insn | str]:
    """Accept a TCP segment whose payload's first word is one of `words`, or equals `value`
    under `mask`. With `ind`, offsets are relative to X (the IPv4 header length). A segment
    without payload fails the load, which drops it."""
    ld_b = _LD_B_IND if ind else _LD_B_ABS
    prog: list[Insn | str] = [(ld_b, 0, 0, offset_at), (_ALU_AND_K, 0, 0, 0xF0)]
    prog.append((_ALU_RSH_K, 0, 0, 2))
    if ind:
        prog.append((_ALU_ADD_X, 0, 0, 0))
    prog += [(_TAX, 0, 0, 0), (_LD_W_IND, 0, 0, payload_at)]
    prog += [(_JEQ, "accept", 0, struct.unpack("!I", w)[0]) for w in words]
    for mask, value in masked:
        prog += [(_LD_W_IND, 0, 0, payload_at), (_ALU_AND_K, 0, 0, mask)]
        prog.append((_JEQ, "accept", 0, value))
    return prog


def _tcp_guard(
    flags_at: int, offset_at: int, payload_at: int, syn: bool, heads: bool, ind: bool
) -> list[Insn | str]:
    """The mesh guard's TCP: SYNs without ACK (new connections, for the control-plane watch)
    and segments whose payload starts with an HTTP method (plaintext request heads, for the
    bypass watch), a status line or an HTTP/2 SETTINGS frame header (length < 256, type 4:
    the server's first bytes); TLS records and bulk data never match."""
    ld_b = _LD_B_IND if ind else _LD_B_ABS
    prog: list[Insn | str] = []
    if syn:
        prog += [(ld_b, 0, 0, flags_at), (_ALU_AND_K, 0, 0, 0x12), (_JEQ, "accept", 0, 0x02)]
    if heads:
        words = (*HTTP_HEAD_WORDS, b"HTTP")
        prog += _payload_starts(offset_at, payload_at, words, [(0xFFFF00FF, 0x04)], ind)
    return prog


def proxy_hop_filter(via: Iterable[str]) -> list[Insn | str]:
    """An Istio pod's `lo`, for the bypass watch: the segments the proxy's hop from `via`
    (127.0.0.6 / ::6) starts a request with: an HTTP/1 request line, the HTTP/2 preface, or an
    HTTP/2 HEADERS frame (type 1, the frame header's fourth byte; a body segment whose fourth
    byte is 1 passes too, and is told apart in Python). One packet per request: never the
    bodies, the app's answers or the pod's other loopback traffic."""
    via = list(via)
    v4 = _payload_starts(14 + 12, 14, HTTP_HEAD_WORDS, [(0xFF, 0x01)], ind=True)
    v6 = _payload_starts(14 + 40 + 12, 14 + 40, HTTP_HEAD_WORDS, [(0xFF, 0x01)], ind=False)
    return [
        (_LD_W_ABS, 0, 0, _SKF_AD_PKTTYPE),
        (_JEQ, "drop", 0, PACKET_OUTGOING),  # lo's duplicate
        (_LD_H_ABS, 0, 0, 12),
        (_JEQ, 0, "not4", 0x0800),
        (_LD_B_ABS, 0, 0, 23),
        (_JEQ, 0, "drop", 6),
        *_from(socket.AF_INET, via, "via4"),
        (_LD_H_ABS, 0, 0, 20),
        (_JSET, "drop", 0, 0x1FFF),  # not a later fragment
        (_LDX_B_MSH, 0, 0, 14),
        *v4,
        (_JEQ, "drop", "drop", 0),
        "not4",
        (_JEQ, 0, "drop", 0x86DD),
        (_LD_B_ABS, 0, 0, 20),
        (_JEQ, 0, "drop", 6),
        *_from(socket.AF_INET6, via, "via6"),
        *v6,
        (_JEQ, "drop", "drop", 0),
        "accept",
        (_RET_K, 0, 0, SNAPLEN),
        "drop",
        (_RET_K, 0, 0, 0),
    ]


# the first four bytes of an HTTP/1 request line, or of the HTTP/2 preface ("PRI * HTTP/2.0")
HTTP_HEAD_WORDS = (b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"PATC", b"OPTI", b"PRI ")


def netthreat_filter(syn: bool = False, http_heads: bool = False) -> list[Insn | str]:
    """ICMP, ICMPv6, UDP, every IP fragment (teardrop, ping of death) and TCP port 53 (AXFR);
    with `syn`/`http_heads` also the mesh guard's TCP (`_tcp_guard`)."""
    v4 = _tcp_guard(14 + 13, 14 + 12, 14, syn, http_heads, ind=True)
    v6 = _tcp_guard(14 + 40 + 13, 14 + 40 + 12, 14 + 40, syn, http_heads, ind=False)
    return [
        (_LD_H_ABS, 0, 0, 12),
        (_JEQ, "v4", 0, 0x0800),
        (_JEQ, "v6", "drop", 0x86DD),
        "v4",
        (_LD_H_ABS, 0, 0, 20),
        (_JSET, "accept", 0, 0x3FFF),  # MF or offset: a fragment
        (_LD_B_ABS, 0, 0, 23),
        (_JEQ, "accept", 0, 1),
        (_JEQ, "accept", 0, 17),
        (_JEQ, 0, "drop", 6),
        (_LDX_B_MSH, 0, 0, 14),
        (_LD_H_IND, 0, 0, 14),
        (_JEQ, "accept", 0, 53),
        (_LD_H_IND, 0, 0, 16),
        (_JEQ, "accept", 0, 53),
        *v4,
        (_JEQ, "drop", "drop", 0),
        "v6",
        (_LD_B_ABS, 0, 0, 20),
        (_JEQ, "accept", 0, 58),
        (_JEQ, "accept", 0, 17),
        (_JEQ, "accept", 0, 44),
        (_JEQ, 0, "drop", 6),
        (_LD_H_ABS, 0, 0, 54),
        (_JEQ, "accept", 0, 53),
        (_LD_H_ABS, 0, 0, 56),
        (_JEQ, "accept", 0, 53),
        *v6,
        (_JEQ, "drop", "drop", 0),
        "accept",
        (_RET_K, 0, 0, SNAPLEN),
        "drop",
        (_RET_K, 0, 0, 0),
    ]


def attach_filter(sock: socket.socket, program: list[Insn | str]) -> None:
    """SO_ATTACH_FILTER with a struct sock_fprog pointing at the assembled program."""
    code = assemble(program)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in code))
    fprog = struct.pack("@HP", len(code), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_path(name_or_path: str) -> str:
    """`--netns` accepts a name under /run/netns or any path (e.g. /proc/PID/ns/net)."""
    return name_or_path if "/" in name_or_path else f"/run/netns/{name_or_path}"


def in_netns(netns: str | None, fn: Callable[..., T], *args: object) -> T:
    """Run fn(*args) in a throw-away thread joined to `netns` (None: this namespace)."""
    if netns is None:
        return fn(*args)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            _setns(netns_path(netns))
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=work, name="setns", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


_BLOCK_STATUS = struct.Struct("I")  # tpacket_block_desc.hdr.bh1.block_status at +8
_BLOCK_PKTS = struct.Struct("II")  # num_pkts, offset_to_first_pkt at +12
_PKT_HDR = struct.Struct("IIIIIIHH")  # tpacket3_hdr: next, sec, nsec, snaplen, len, status, mac
TP_STATUS_USER = 1
PACKET_VERSION = 10
PACKET_RX_RING = 5
TPACKET_V3 = 2
FrameFn = Callable[[bytes, float], None]


class Capture:
    """One AF_PACKET socket on one interface of one namespace, filtered in the kernel.

    Packets arrive in a TPACKET_V3 ring shared with the kernel (what tcpdump uses): one wake-up
    hands over a whole block of packets without a system call per packet, which is most of
    the per-packet cost Python can save. `drain(fn)` calls fn(frame, timestamp) per packet.
    """

    def __init__(
        self,
        iface: str,
        program: list[Insn | str],
        netns: str | None = None,
        block_size: int = 1 << 20,
        blocks: int = 32,
        # a quiet socket's blocks are retired by this timeout: the kernel can write for
        # blocks x timeout without Python; at 10 ms a 20-80 ms stall of a shared core dropped
        # packets (bench/nodetap.py --only-pods), at 100 ms none
        block_timeout_ms: int = 100,
        promisc: bool = False,
    ) -> None:
        self.iface = iface
        self.promisc = promisc
        self.netns = netns
        self.where = f"{netns}:{iface}" if netns else iface
        self.block_size = block_size
        self.blocks = blocks
        self.sock: socket.socket = in_netns(
            netns, self._open, iface, program, block_size, blocks, block_timeout_ms, promisc
        )
        self.ring = mmap.mmap(
            self.sock.fileno(),
            block_size * blocks,
            mmap.MAP_SHARED,
            mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self.block = 0  # next block to look at
        self.kernel_packets = 0
        self.kernel_drops = 0

    @staticmethod
    def _open(
        iface: str,
        program: list[Insn | str],
        block_size: int,
        blocks: int,
        timeout_ms: int,
        promisc: bool,
    ) -> socket.socket:
        # protocol 0: receives nothing until bound, so no unfiltered packet slips in first
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame = 2048
            req = struct.pack(
                "7I", block_size, blocks, frame, block_size // frame * blocks, timeout_ms, 0, 0
            )
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            attach_filter(sock, program)
            sock.bind((iface, ETH_P_ALL))
            if promisc:
                # struct packet_mreq: ifindex, type, address length, address[8]
                mreq = struct.pack("iHH8s", socket.if_nametoindex(iface), PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, fn: FrameFn, max_blocks: int = 8) -> int:
        """Hand every packet of the ready blocks to fn; returns how many packets."""
        ring = self.ring
        size = self.block_size
        hdr = _PKT_HDR.unpack_from
        count = 0
        for _ in range(max_blocks):
            base = self.block * size
            if not _BLOCK_STATUS.unpack_from(ring, base + 8)[0] & TP_STATUS_USER:
                break
            n, off = _BLOCK_PKTS.unpack_from(ring, base + 12)
            off += base
            for _ in range(n):
                nxt, sec, nsec, snap, _len, _st, mac, _net = hdr(ring, off)
                start = off + mac
                fn(ring[start : start + snap], sec + nsec * 1e-9)
                off += nxt
            count += n
            _BLOCK_STATUS.pack_into(ring, base + 8, 0)  # give the block back to the kernel
            self.block = (self.block + 1) % self.blocks
        return count

    def read_stats(self) -> tuple[int, int]:
        """Kernel counters (PACKET_STATISTICS resets on read, so they are accumulated here);
        packets include the dropped ones."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, _freeze = struct.unpack("III", raw)
        self.kernel_packets += packets
        self.kernel_drops += drops
        return self.kernel_packets, self.kernel_drops

    def close(self) -> None:
        self.ring.close()
        self.sock.close()
