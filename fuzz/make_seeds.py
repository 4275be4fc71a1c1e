#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/corpus/<target>/ (seed-* files).

The corpus also holds inputs the fuzzer found and `run.sh --merge` kept; this script only
(re)writes the seed-* ones, so it can be re-run after a format change. Run from anywhere:

    python3 fuzz/make_seeds.py
"""

import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write(target, name, data, where="corpus"):
    directory = os.path.join(HERE, where, target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


# --- request_decoder: [split mode, split seed] + a stream of frames -------------------------

def frame(body, kind=1, ident=1, version=1, length=None):
    if not isinstance(body, bytes):
        body = json.dumps(body, separators=(",", ":")).encode()
    if length is None:
        length = len(body)
    return b"SHMB" + struct.pack("<HHII", version, kind, ident, length) + body


requests = [
    {"op": "status"},
    {"op": "list"},
    {"op": "info", "channel": "frames"},
    {"op": "create", "channel": "frames", "capacity": 1048576,
     "producers": ["*", "alice", "@video"], "consumers": ["1000", "@44"]},
    {"op": "drop", "channel": "frames"},
    {"op": "attach", "channel": "frames", "role": "producer"},
    {"op": "attach", "channel": "frames", "role": "consumer", "future_field": [1, 2]},
]
all_valid = b"".join(frame(r, ident=i + 1) for i, r in enumerate(requests))
write("request_decoder", "all-ops-whole", b"\x07\x00" + all_valid)
write("request_decoder", "all-ops-drip", b"\x00\x01" + all_valid)
write("request_decoder", "all-ops-odd-reads", b"\xf9\x2a" + all_valid)  # mixed push/read/fail
write("request_decoder", "all-ops-sized-17", b"\x0b\x05" + all_valid)
write("request_decoder", "other-version",
      b"\x02\x03" + frame({"op": "list"}, version=2, ident=9) + frame({"op": "status"}, ident=10))
write("request_decoder", "reply-kind", b"\x01\x01" + frame({"ok": True}, kind=2, ident=3))
write("request_decoder", "bad-kind", b"\x01\x01" + frame({"op": "list"}, kind=7, ident=4))
write("request_decoder", "oversized", b"\x04\x09" + frame(b"", ident=5, length=0xFFFFFFF0))
write("request_decoder", "max-body",
      b"\x06\x11" + frame(b'{"op":"list","pad":"' + b"x" * (65536 - 22) + b'"}', ident=6))
write("request_decoder", "bad-json",
      b"\x03\x02" + frame(b'{"op":"attach","channel":', ident=7) + frame({"op": "bogus"}, ident=8)
      + frame({"op": "attach", "channel": "x", "role": "both"}, ident=9) + frame(b"\xff\xfe", ident=10))
write("request_decoder", "http", b"\x05\x00GET / HTTP/1.1\r\nHost: x\r\n\r\n")
write("request_decoder", "half-header", b"\x00\x00" + frame({"op": "list"})[:11])
write("request_decoder", "truncated-body", b"\x02\x07" + frame({"op": "list"})[:-3])

# --- config_parser: text ----------------------------------------------------------------------

os.makedirs(os.path.join(HERE, "corpus", "config_parser"), exist_ok=True)
shutil.copyfile(os.path.join(ROOT, "config", "shmem-broker.toml"),
                os.path.join(HERE, "corpus", "config_parser", "seed-example-config"))
configs = {
    "minimal": "version = 1\n",
    "empty": "",
    "inline-channels": 'version = 1\nchannel = [{ name = "a", capacity = 8192 }, { name = "b" }]\n',
    "dotted-logging": 'version = 1\nlogging.level = "debug"\nlogging.format = "json"\n',
    "quotas": ('version = 1\nmax_ring_bytes = "2GiB"\nrequest_timeout = "1500ms"\n'
               "[per_uid]\nmax_clients = 7\nmax_channels = 3\nmax_ring_bytes = 65536\n"
               "max_attaches_per_sec = 9\n"),
    "capacities": ('version = 1\nmax_capacity = "64KiB"\ndefault_capacity = "4KiB"\n'
                   '[[channel]]\nname = "x.y_z-1"\ncapacity = "5000"\n'),
    "typo": 'version = 1\n[[channel]]\nname = "cam"\ncapcity = "1MiB"\n',
    "duplicate": 'version = 1\n[[channel]]\nname = "cam"\n\n[[channel]]\nname = "cam"\n',
    "access": ('version = 1\nadmin_groups = ["root", "@0"]\n[[channel]]\nname = "a"\n'
               'producers = ["root", "0", "*"]\nconsumers = ["@root", "@0"]\n'),
    "socket": 'version = 1\nsocket = "/run/shmem-broker/broker.sock"\nsocket_mode = "0660"\n',
    "wrong-version": "version = 2\nfuture = true\n",
    "unterminated": 'version = 1\n\n[[channel]]\nname = "unterminated\n',
    "types": ('version = 1\nmax_channels = "10"\nwhen = 1979-05-27T07:32:00Z\n'
              "[logging]\nformat = 1\n"),
    "unicode": 'version = 1\n# caf\u00e9 \u2603\n[[channel]]\nname = "caf\u00e9"\n',
    "crlf": "version = 1\r\n[logging]\r\nlevel = \"warn\"\r\n",
}
# Reported: a lone carriage return gives an error with an empty message.
write("config_parser", "lone-cr", "\r", where="artifacts-found")
# Reported: accepted by the parser (and --check-config), refused when the broker creates it.
write("config_parser", "capacity-above-ring-max",
      'version = 1\nmax_capacity = "2TiB"\n[[channel]]\nname = "big"\ncapacity = "2TiB"\n',
      where="artifacts-found")
for name, text in configs.items():
    write("config_parser", name, text)

# --- ring_reader: start position + operations -------------------------------------------------

def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def start(pos):
    return u64(pos)


def send(length, fill=0):
    return bytes([0]) + u16(length) + bytes([fill])


def batch(count, length):
    return bytes([3, count - 1, length])


EOS = bytes([4])
READ = bytes([5])
REATTACH = bytes([8])
PRODUCER_REATTACH = bytes([9])


def read_batch(maximum):
    return bytes([6, maximum])


def misc(sub):
    return bytes([7, sub])


def set_write_pos(value, mode=0):
    return bytes([10]) + u64(value) + bytes([mode])


def header_u64(offset, value):
    return bytes([11]) + u16(offset // 8) + u64(value)


def frame_header(at, length, kind):
    return bytes([13]) + u16(at // 8) + u32(length) + u32(kind)


def data_bytes(offset, data):
    return bytes([14]) + u16(offset) + bytes([len(data)]) + data


def set_read_pos(value, mode=0):
    return bytes([15]) + u64(value) + bytes([mode])


write("ring_reader", "round-trip", start(0) + (send(5, 1) + READ) * 4 + EOS + READ + READ)
write("ring_reader", "wrap", start(0) + (send(700, 2) + READ) * 12 + misc(4))
write("ring_reader", "fill-then-drain",
      start(0) + send(1000) * 5 + read_batch(2) + send(1000) + read_batch(15) + misc(1))
write("ring_reader", "batches", start(0) + (batch(8, 20) + read_batch(5) + read_batch(15)) * 4)
write("ring_reader", "start-near-end", start(4088) + send(100) + READ + send(4088) + READ + READ)
write("ring_reader", "start-far", start(1 << 61) + send(3) + EOS + read_batch(4) + read_batch(4))
# Reproducers of reported bugs: they crash the target until the bug is fixed, so they live in
# artifacts-found/ (move them into corpus/ once fixed; see artifacts-found/README.md).
write("ring_reader", "pad-then-eos",
      start(0) + send(3000) + READ + send(16) + send(3100) + EOS + read_batch(15) + read_batch(15),
      where="artifacts-found")
write("ring_reader", "messages-read-overflow",
      start(0) + header_u64(136, 0xFFFFFFFFFFFFFFFF) + REATTACH + send(3) + READ,
      where="artifacts-found")
write("ring_reader", "unaligned-read-pos",
      start(4088) + set_read_pos(4092) + set_write_pos(4100) + REATTACH + READ,
      where="artifacts-found")
write("ring_reader", "reattach-mid-stream",
      start(0) + send(10) + send(20) + send(30) + READ + REATTACH + READ + READ + REATTACH
      + PRODUCER_REATTACH + send(40) + misc(0) + misc(1) + misc(2) + misc(3) + READ)
write("ring_reader", "hostile-length",
      start(0) + send(10) + frame_header(0, 1_000_000, 1) + READ + frame_header(0, 4088, 1)
      + set_write_pos(4096) + READ)
write("ring_reader", "hostile-kind", start(0) + send(10) + frame_header(0, 5, 99) + READ + read_batch(3))
write("ring_reader", "hostile-positions",
      start(0) + send(10) + set_write_pos(1 << 40) + READ + set_write_pos(0, 3) + READ
      + set_read_pos(1 << 40) + REATTACH + READ)
write("ring_reader", "hostile-pad",
      start(0) + send(100) + frame_header(0, 100, 3) + READ + data_bytes(8, b"\xff" * 16) + READ)
write("ring_reader", "hostile-identity",
      start(0) + header_u64(0, 0) + REATTACH + READ + header_u64(0, int.from_bytes(b"SHMRING1", "little"))
      + header_u64(16, 8192) + REATTACH + READ)
write("ring_reader", "hostile-counters",
      start(0) + header_u64(72, 0xFFFFFFFFFFFFFFFF) + header_u64(80, 1 << 63) + send(3) + READ + misc(4))

# ring_reader: positions near the top of the u64 range (start modes 2 and 3; see the target)
MAX_POSITION = 2**64 - 2**42
write("ring_reader", "start-below-max-position",
      start(2 | (4 << 4)) + (send(1000) + READ) * 6 + EOS + READ)
write("ring_reader", "start-near-2-pow-64", start(2**64 - 16 | 3) + send(3) + READ + REATTACH + READ)
write("ring_reader", "positions-near-2-pow-64",
      start(0) + send(10) + set_write_pos(16, 3) + READ + set_read_pos(2**64 - 32, 3) + REATTACH
      + READ + set_write_pos(MAX_POSITION + 16) + READ)

# ring_reader, layout 3 (start bit 2; see the target): the consumer maps the ring memfd
# read-only, its position and flag live in the ack page, which the producer cannot write
L3 = 4
write("ring_reader", "layout-3-round-trip",
      start(L3) + (send(5, 1) + READ) * 4 + EOS + READ + READ)
write("ring_reader", "layout-3-wrap", start(L3) + (send(700, 2) + READ) * 12 + misc(4))
write("ring_reader", "layout-3-batches",
      start(L3 | (1 << 40)) + (batch(8, 20) + read_batch(5) + read_batch(15)) * 4)
write("ring_reader", "layout-3-sleep-wake",
      start(L3) + misc(1) + misc(5) + send(10) + misc(3) + misc(2) + READ + misc(1) + misc(3)
      + misc(0) + send(3000) + misc(1) + read_batch(4) + misc(3) + misc(2))
write("ring_reader", "layout-3-reattach",
      start(L3) + send(10) + send(20) + READ + REATTACH + READ + PRODUCER_REATTACH + send(30)
      + REATTACH + read_batch(8))
# The producer writes where layouts 1 and 2 kept the consumer's line and flag (unused in
# layout 3): the reader must not look there, and the ring stays clean.
write("ring_reader", "layout-3-old-consumer-line",
      start(L3) + send(10) + set_read_pos(0, 2) + header_u64(136, 2**64 - 1)
      + header_u64(192, 1) + READ + send(20) + REATTACH + READ + misc(1) + misc(2))
write("ring_reader", "layout-3-hostile-layout",
      start(L3) + send(10) + header_u64(8, 2) + REATTACH + READ + header_u64(8, 3) + REATTACH
      + READ + header_u64(8, 4) + REATTACH)
write("ring_reader", "layout-3-hostile-frames",
      start(L3) + send(100) + frame_header(0, 4088, 1) + READ + send(10)
      + data_bytes(120, b"\xff" * 16) + set_write_pos(2**64 - 16) + read_batch(3) + REATTACH)
write("ring_reader", "layout-3-near-2-pow-64",
      start(2**64 - 16 | 3 | L3) + send(3) + READ + REATTACH
      + header_u64(64, MAX_POSITION) + REATTACH + READ)
write("ring_reader", "layout-3-below-max-position",
      start(2 | L3 | (4 << 4)) + (send(1000) + READ) * 6 + EOS + READ)

# --- ring_writer: start position + operations (a producer facing a hostile consumer) ---------

def w_send(length, fill=0):
    return bytes([fill % 3]) + u16(length)


def w_up_to(reserve, used):
    return bytes([3]) + u16(reserve) + u16(used)


def w_batch(count, length):
    return bytes([4, count - 1, length])


def w_make_room(length):
    return bytes([5]) + u16(length)


def w_after_gap(missed, length):
    return bytes([6, missed - 1]) + u16(length)


def w_gap(missed):
    return bytes([7]) + u64(missed) + bytes([0])


W_EOS = bytes([8])


def w_misc(sub, length=0):
    return bytes([9]) + u16(length) + bytes([sub])


W_READ = bytes([10])


def w_read_batch(limit):
    return bytes([11, limit - 1])


W_REATTACH_WRITER = bytes([12, 0])
W_REATTACH_READER = bytes([12, 1])
W_READER_SLEEP = bytes([12, 2])
W_READER_AWAKE = bytes([12, 3])


def w_read_pos(value, mode=0):
    return bytes([13]) + u64(value) + bytes([mode])


def w_header(pick, value):
    return bytes([14, pick]) + u64(value)


def w_data(offset, data):
    return bytes([15]) + u16(offset) + bytes([len(data)]) + data


write("ring_writer", "round-trip", start(0) + (w_send(5, 1) + W_READ) * 4 + W_EOS + W_READ + W_READ)
write("ring_writer", "wrap", start(0) + (w_send(700) + W_READ) * 12 + w_misc(4))
write("ring_writer", "layout-1", start(8) + (w_send(300) + w_read_batch(3)) * 20 + W_EOS + W_READ)
write("ring_writer", "fill-sleep-drain",
      start(0) + w_send(1000) * 5 + w_misc(1, 1000) + W_READ + w_misc(3) + w_misc(0, 1000)
      + w_misc(2) + w_send(1000) + w_read_batch(8))
write("ring_writer", "up-to-and-make-room",
      start(4000) + w_up_to(3000, 10) + w_up_to(100, 0) + W_READ + w_make_room(3500) + W_READ
      + w_make_room(3500) + w_send(3500) + W_READ)
write("ring_writer", "gaps",
      start(0) + w_send(10) + w_after_gap(3, 20) + w_gap(2) + W_EOS + w_read_batch(8)
      + w_read_batch(8) + W_REATTACH_READER + W_READ)
write("ring_writer", "reattach",
      start(0) + w_batch(8, 20) + W_REATTACH_WRITER + w_send(30) + W_REATTACH_READER
      + w_read_batch(8) + w_read_batch(8) + W_READ)
write("ring_writer", "start-below-max-position",
      start(2 | (4 << 4)) + (w_send(1000) + W_READ) * 8 + W_EOS + W_READ)
write("ring_writer", "start-near-2-pow-64",
      start(2**64 - 16 | 3) + w_send(3) + W_EOS + W_REATTACH_WRITER + w_send(3))
write("ring_writer", "hostile-read-pos-near-2-pow-64",
      start(0) + w_send(100) + w_read_pos(0, 3) + w_send(3000) + w_send(3000) + w_misc(0, 3000)
      + w_read_pos(0, 4) + w_send(3000) + W_REATTACH_WRITER + w_send(3))
write("ring_writer", "hostile-read-pos-behind-and-ahead",
      start(1 << 40) + w_send(2000) + w_read_pos(5000, 5) + w_send(2000) + w_send(2000)
      + w_read_pos(64, 2) + w_batch(8, 200) + w_read_pos(7, 1) + w_misc(1, 100))
write("ring_writer", "hostile-counters-and-flags",
      start(0) + w_header(2, 2**64 - 1) + w_header(3, 2**64 - 1) + w_header(4, 2**64 - 1)
      + w_header(6, 1) + w_header(7, 1) + w_header(0, 2**64 - 1) + w_send(10) + w_misc(3)
      + w_after_gap(1, 5) + w_misc(4) + W_REATTACH_WRITER + w_send(10))
write("ring_writer", "hostile-identity",
      start(0) + w_header(8, 0) + W_REATTACH_WRITER + w_send(3)
      + w_header(255, 0) + W_REATTACH_WRITER + w_send(3))
write("ring_writer", "hostile-data",
      start(0) + w_send(100) + w_data(0, b"\xff" * 16) + w_send(100) + W_READ + W_READ)

# ring_writer, layout 3: the producer maps the ack page read-only; the hostile consumer
# scribbles only its ack page (w_header picks ack words, w_data ack bytes)
write("ring_writer", "layout-3-round-trip",
      start(L3) + (w_send(5, 1) + W_READ) * 4 + W_EOS + W_READ + W_READ)
write("ring_writer", "layout-3-fill-sleep-drain",
      start(L3) + w_send(1000) * 4 + w_misc(1, 1000) + W_READ + w_misc(3) + w_misc(3)
      + w_misc(0, 1000) + w_misc(2) + w_send(1000) + w_read_batch(8) + w_misc(3))
write("ring_writer", "layout-3-gaps-and-reattach",
      start(L3) + w_send(10) + w_after_gap(3, 20) + w_gap(2) + w_batch(8, 20) + W_EOS
      + W_REATTACH_WRITER + w_read_batch(8) + W_REATTACH_READER + w_read_batch(8) + W_READ)
write("ring_writer", "layout-3-up-to-and-make-room",
      start(L3 | 4000) + w_up_to(3000, 10) + W_READ + w_make_room(3500) + W_READ
      + w_make_room(3500) + w_send(3500) + W_READ)
write("ring_writer", "layout-3-hostile-read-pos",
      start(L3 | (1 << 40)) + w_send(2000) + w_read_pos(5000, 5) + w_send(2000)
      + w_read_pos(0, 3) + w_send(3000) + w_read_pos(0, 4) + w_misc(0, 3000)
      + W_REATTACH_WRITER + w_send(3))
write("ring_writer", "layout-3-hostile-ack",
      start(L3) + w_send(10) + w_header(1, 2**64 - 1) + w_header(2, 7) + w_misc(3) + w_misc(3)
      + w_header(2, 0) + w_misc(3) + w_data(0, b"\x08" * 12) + w_send(10) + w_misc(4)
      + w_header(255, 1) + W_REATTACH_WRITER + w_send(10) + W_REATTACH_READER + W_READ)
# Wake-ups across re-attaches: each new reader's or writer's first sleep must be woken (in
# layout 3 a waker remembers the ticket it woke last; see client/src/ring.rs first_ticket).
for name, layout in [("layout-3", L3), ("layout-2", 0)]:
    write("ring_writer", name + "-reader-reattach-wake",
          start(layout) + W_READER_SLEEP + w_send(3) + w_misc(3) + W_READER_AWAKE + W_READ
          + W_REATTACH_READER + W_READER_SLEEP + w_send(3) + w_misc(3) + w_misc(3)
          + W_READER_AWAKE + W_READ)
    write("ring_writer", name + "-writer-reattach-wake",
          start(layout) + w_send(3000) + W_READ + w_send(1000) + w_send(2000)
          + w_misc(1, 2000) + W_READ + w_misc(2) + W_REATTACH_WRITER + w_misc(1, 3000)
          + W_READ + W_READ + w_send(3000))
write("ring_writer", "layout-3-near-2-pow-64",
      start(2**64 - 16 | 3 | L3) + w_send(3) + W_EOS + W_REATTACH_WRITER + w_send(3))

total = 0
for dirpath, _, files in os.walk(os.path.join(HERE, "corpus")):
    if "/corpus" not in dirpath:
        continue
    total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
print(f"corpus: {total} bytes")
