#!/usr/bin/env python3
"""Writes the seed corpora of fuzz-stream-ws and fuzz-stream-spdy: whole
client sessions as the kubelet and crictl speak them, plus the hostile
inputs that once broke the server. Input layout: fuzz/session-harness.h
(byte 0 the request, byte 1 the subprotocol, then the client's bytes).

    fuzz/stream-seeds.py fuzz/corpus
"""

import base64
import json
import os
import struct
import sys
import zlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from lab.streaming import (SPDY_DICTIONARY, control_frame, data_frame,  # noqa: E402
                           encode_header_block)

EXEC, ATTACH, FORWARD = 0, 1, 2
TTY, STDIN, STDOUT, STDERR = 4, 8, 16, 32
ALL = STDIN | STDOUT | STDERR


def how(kind, flags=0, ports=0):
    return kind | flags | ports << 6


# --- WebSocket ---

WS_V5, WS_V4, WS_V4B64, WS_V1, WS_B64, WS_NONE = range(6)


def ws(opcode, payload=b"", fin=True, mask=b"\x01\x02\x03\x04", rsv=0):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if mask:
        head += mask
        payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + payload


def ws_seeds():
    close = ws(8, struct.pack(">H", 1000))
    resize = json.dumps({"Width": 80, "Height": 24}).encode()
    yield "exec-v5", how(EXEC, ALL), WS_V5, \
        ws(2, b"\x00hello\n") + ws(2, b"\xff\x00") + ws(9, b"ping") + close
    yield "empty-fragments", how(EXEC, ALL), WS_V5, \
        ws(1, b"", fin=False) + ws(0, b"", fin=True) + ws(2, b"\x00abc") + close
    yield "fragments-and-control", how(EXEC, ALL), WS_V4, \
        ws(2, b"", fin=False) + ws(0, b"\x00", fin=False) + ws(9, b"mid") + \
        ws(0, b"xyz", fin=False) + ws(10, b"") + ws(0, b"", fin=True) + close
    yield "base64", how(EXEC, ALL), WS_V4B64, \
        ws(1, b"0" + base64.b64encode(b"hi there")) + ws(1, b"0!!!") + close
    yield "tty-resize", how(EXEC, TTY | STDIN | STDOUT), WS_V4, \
        ws(2, b"\x04" + resize) + ws(2, b"\x04" + resize[:7]) + ws(2, b"\x04" + resize[7:]) + \
        ws(2, b"\x00ls\n") + close
    yield "v1-attach", how(ATTACH, STDIN | STDOUT), WS_V1, ws(2, b"\x00line\n") + close
    yield "no-protocol", how(EXEC, STDOUT), WS_NONE, ws(2, b"\x00x") + close
    yield "port-forward", how(FORWARD, ports=2), WS_V4, \
        ws(2, b"\x00GET / HTTP/1.0\r\n\r\n") + ws(2, b"\x02x") + ws(2, b"\x01oops") + close
    yield "port-forward-b64", how(FORWARD, ports=1), WS_V4B64, \
        ws(1, b"0" + base64.b64encode(b"data")) + close
    yield "unmasked", how(EXEC, ALL), WS_V5, ws(2, b"\x00abc", mask=None)
    yield "continuation-first", how(EXEC, ALL), WS_V5, ws(0, b"\x00abc")
    # A frame that says it is longer than any accepted (its payload need not follow).
    yield "oversized-frame", how(EXEC, ALL), WS_V5, \
        bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 20) + b"\x01\x02\x03\x04"


# --- SPDY/3.1 ---

SP_V5, SP_V4, SP_V3, SP_V2, SP_V1, SP_PF = range(6)
SYN_STREAM, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 1, 3, 4, 6, 7, 9
FIN = 1


class Spdy:
    def __init__(self):
        self.z = zlib.compressobj(zdict=SPDY_DICTIONARY)
        self.out = b""

    def syn(self, sid, headers, fin=False):
        block = encode_header_block(self.z, headers)
        self.out += control_frame(SYN_STREAM, FIN if fin else 0,
                                  struct.pack(">IIBB", sid, 0, 0, 0) + block)
        return self

    def data(self, sid, payload, fin=False):
        self.out += data_frame(sid, FIN if fin else 0, payload)
        return self

    def ctl(self, ftype, payload, flags=0):
        self.out += control_frame(ftype, flags, payload)
        return self


def spdy_seeds():
    resize = json.dumps({"Width": 100, "Height": 30}).encode()
    s = Spdy().syn(1, {"streamType": "error"}).syn(3, {"streamType": "stdin"}) \
        .syn(5, {"streamType": "stdout"}).syn(7, {"streamType": "stderr"}) \
        .data(3, b"hello\n").data(3, b"", fin=True).ctl(PING, struct.pack(">I", 1)) \
        .ctl(GOAWAY, struct.pack(">II", 7, 0))
    yield "exec-v4", how(EXEC, ALL), SP_V4, s.out
    s = Spdy().syn(1, {"streamType": "error"}).syn(3, {"streamType": "stdin"}) \
        .syn(5, {"streamType": "stdout"}).syn(7, {"streamType": "resize"}) \
        .data(7, resize).data(3, b"x").ctl(RST_STREAM, struct.pack(">II", 3, 5))
    yield "tty-resize", how(EXEC, TTY | STDIN | STDOUT), SP_V4, s.out
    s = Spdy().syn(1, {"streamType": "error"}).syn(3, {"streamType": "stdout"}) \
        .ctl(SETTINGS, struct.pack(">I", 0)).ctl(WINDOW_UPDATE, struct.pack(">II", 3, 1000))
    yield "attach-v2", how(ATTACH, STDOUT), SP_V2, s.out
    s = Spdy().syn(1, {"streamType": "error", "port": "80", "requestID": "0"}) \
        .syn(3, {"streamType": "data", "port": "80", "requestID": "0"}) \
        .data(3, b"abc", fin=True) \
        .syn(5, {"streamType": "error", "port": "81", "requestID": "1"}) \
        .syn(7, {"streamType": "data", "port": "81", "requestID": "1"}) \
        .syn(9, {"streamType": "data", "port": "80"}) \
        .ctl(GOAWAY, struct.pack(">II", 9, 0))
    yield "port-forward", how(FORWARD), SP_PF, s.out
    s = Spdy().syn(1, {"streamType": "error"}).syn(1, {"streamType": "stdout"}) \
        .syn(4, {"streamType": "stderr"}).syn(3, {"streamType": "bogus"}) \
        .data(0, b"x").data(99, b"y")
    yield "broken-streams", how(EXEC, STDOUT | STDERR), SP_V3, s.out
    yield "bad-version", how(EXEC, STDOUT), SP_V1, control_frame(PING, 0, b"\0\0\0\1", version=2)
    yield "garbage-headers", how(EXEC, STDOUT), SP_V4, \
        control_frame(SYN_STREAM, 0, struct.pack(">IIBB", 1, 0, 0, 0) + b"\x78\xbb junk")


def main(root):
    for name, gen in (("stream-ws", ws_seeds), ("stream-spdy", spdy_seeds)):
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        for seed, h, proto, body in gen():
            with open(os.path.join(d, seed), "wb") as f:
                f.write(bytes([h, proto]) + body)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus"))
