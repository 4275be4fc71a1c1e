"""The Python and C rows of BENCHMARKS.md, with one command:

    pip install ./bindings/python          # a release build of the extension, numpy not needed
    python bindings/python/bench/bench.py  # builds the rest, starts its own broker, prints rows

Python producer to Python consumer (two processes) at 64 B, 64 KiB and 1 MiB through a
shmem-broker channel (send(bytes) / recv() -> bytes; and zero-copy: a loan the producer fills
whole, a recv_view the consumer releases without reading it), against
multiprocessing.shared_memory (a ring of slots, two semaphores) and multiprocessing.Pipe; then
C (libshmem_broker, bench/pair_bench.c) against the Rust client (client/examples/pair_bench.rs),
one producer thread and one consumer thread each. Every figure is the median of --runs runs,
with the spread (min-max) beside it.

Buffering, which decides the working set (how much memory a message stream sweeps through, so
whether it stays in the caches): every Python transport is measured twice, with room for 8
messages ("8 msgs": the shared_memory ring's 8 slots; a shmem-broker channel of 8 messages'
capacity, rounded up to a page) and with 8 MiB of it ("8 MiB": a channel of 8 MiB, a
shared_memory ring of 8 MiB of slots). --python-only leaves out the C and Rust rows (and their
release builds); --broker names the broker binary (it is not on the data path).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import shared_memory
from pathlib import Path

import shmem_broker

ROOT = Path(__file__).resolve().parents[3]
SIZES = [64, 64 << 10, 1 << 20]
CAPACITY = 8 << 20
# Room for 8 messages: their frames (a 16-byte header each, 16-byte aligned), rounded up to the
# 4 KiB the broker counts capacities in.
FRAME_HEADER = 16


def eight_messages(size: int) -> int:
    frames = 8 * (FRAME_HEADER + (size + 15) // 16 * 16)
    return (frames + 4095) // 4096 * 4096
# Messages per run: about a second of Python at each size.
PY_COUNT = {64: 200_000, 64 << 10: 20_000, 1 << 20: 2_000}
NATIVE_COUNT = {64: 2_000_000, 64 << 10: 100_000, 1 << 20: 5_000}


def human(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB" if size >= 1 << 10 else f"{size} B"


# --- Python through shmem-broker --------------------------------------------------------


def _broker_consumer(socket, channel, zero_copy, ready, out):
    client = shmem_broker.Client(socket)
    with client.consumer(channel) as consumer:
        ready.set()
        n = 0
        if zero_copy:
            while (view := consumer.recv_view()) is not None:
                view.release()
                n += 1
        else:
            for _ in consumer:
                n += 1
        end = time.perf_counter()
    out.put((n, end))


def python_broker(socket, size, count, zero_copy, capacity):
    client = shmem_broker.Client(socket)
    channel = f"bench-py-{size}-{int(zero_copy)}-{capacity}"
    client.create(channel, capacity=capacity, exist_ok=True)
    ready, out = mp.Event(), mp.Queue()
    proc = mp.Process(target=_broker_consumer, args=(socket, channel, zero_copy, ready, out))
    proc.start()
    ready.wait()
    message = bytes(size)
    with client.producer(channel) as producer:
        start = time.perf_counter()
        if zero_copy:
            for _ in range(count):
                view = producer.loan(size)
                view[:] = message  # the whole message written in place (one copy)
                producer.send()
        else:
            for _ in range(count):
                producer.send(message)
    n, end = out.get()
    proc.join()
    client.drop(channel)
    assert n == count, (n, count)
    return end - start


# --- multiprocessing.shared_memory: a ring of slots and two semaphores -------------------

def _shm_consumer(name, size, slots, count, free, filled, out):
    shm = shared_memory.SharedMemory(name=name)
    for i in range(count):
        filled.acquire()
        slot = (i % slots) * size
        bytes(shm.buf[slot : slot + size])  # a copy out, as recv() makes
        free.release()
    end = time.perf_counter()
    shm.close()
    out.put(end)


def python_shared_memory(size, count, slots):
    shm = shared_memory.SharedMemory(create=True, size=slots * size)
    free, filled, out = mp.Semaphore(slots), mp.Semaphore(0), mp.Queue()
    proc = mp.Process(target=_shm_consumer, args=(shm.name, size, slots, count, free, filled, out))
    proc.start()
    message = bytes(size)
    start = time.perf_counter()
    for i in range(count):
        free.acquire()
        slot = (i % slots) * size
        shm.buf[slot : slot + size] = message
        filled.release()
    end = out.get()
    proc.join()
    shm.close()
    shm.unlink()
    return end - start


# --- multiprocessing.Pipe ----------------------------------------------------------------


def _pipe_consumer(conn, count, out):
    for _ in range(count):
        conn.recv_bytes()
    out.put(time.perf_counter())


def python_pipe(size, count):
    rx, tx = mp.Pipe(duplex=False)
    out = mp.Queue()
    proc = mp.Process(target=_pipe_consumer, args=(rx, count, out))
    proc.start()
    message = bytes(size)
    start = time.perf_counter()
    for _ in range(count):
        tx.send_bytes(message)
    end = out.get()
    proc.join()
    return end - start


# --- C and Rust --------------------------------------------------------------------------


def build_native(tmp: Path) -> tuple[Path, Path]:
    for what in (["-p", "shmem-broker-daemon", "-p", "shmem-broker-c"],
                 ["-p", "shmem-broker-client", "--example", "pair_bench"]):
        subprocess.run(["cargo", "build", "--release", *what], cwd=ROOT, check=True)
    c_bench = tmp / "pair_bench_c"
    subprocess.run(
        ["cc", "-O2", "-std=c11", "-I", str(ROOT / "bindings/c/include"),
         str(ROOT / "bindings/python/bench/pair_bench.c"), "-o", str(c_bench),
         "-L", str(ROOT / "target/release"), "-lshmem_broker", "-lpthread"],
        check=True,
    )
    return c_bench, ROOT / "target/release/examples/pair_bench"


def native(program: Path, socket: str, size: int, count: int) -> float:
    client = shmem_broker.Client(socket)
    channel = f"bench-native-{size}"
    client.create(channel, capacity=CAPACITY, exist_ok=True)
    env = dict(os.environ, LD_LIBRARY_PATH=str(ROOT / "target/release"))
    out = subprocess.run([str(program), socket, channel, str(size), str(count)],
                         capture_output=True, text=True, env=env, check=True)
    client.drop(channel)
    return float(out.stdout)


# --- the table -----------------------------------------------------------------------------


def measure(runs: int, run) -> tuple[float, float, float]:
    """Median, min and max of `runs` timings (seconds)."""
    times = [run() for _ in range(runs)]
    return statistics.median(times), min(times), max(times)


def row(label: str, size: int, count: int, times: tuple[float, float, float]) -> str:
    median, fast, slow = times
    rate = count / median
    gib = count * size / median / (1 << 30)
    return (f"| {label} | {human(size)} | {rate / 1e3:,.0f} k msg/s | {gib:.2f} GiB/s | "
            f"{count / slow / 1e3:,.0f}-{count / fast / 1e3:,.0f} k msg/s |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the message counts")
    parser.add_argument("--python-only", action="store_true", help="only the Python rows")
    parser.add_argument("--broker", default=str(ROOT / "target/release/shmem-broker"),
                        help="the broker binary (default: the release build this script makes)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shmem-bench."))
    if not args.python_only:
        c_bench, rust_bench = build_native(tmp)
    socket = str(tmp / "control.sock")
    (tmp / "broker.toml").write_text("version = 1\n")
    broker = subprocess.Popen([args.broker, "--config",
                               str(tmp / "broker.toml"), "--socket", socket],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                shmem_broker.Client(socket)
                break
            except shmem_broker.BrokerNotRunning:
                time.sleep(0.05)
        print("| what | size | median rate | median throughput | spread (min-max rate) |")
        print("| --- | --- | --- | --- | --- |")
        for size in SIZES:
            n = max(1, int(PY_COUNT[size] * args.scale))
            small = eight_messages(size)
            slots_8mib = max(8, CAPACITY // size)
            cases = [
                ("Python -> Python, shmem-broker send/recv, 8 msgs", lambda: python_broker(socket, size, n, False, small)),
                ("Python -> Python, shmem-broker send/recv, 8 MiB", lambda: python_broker(socket, size, n, False, CAPACITY)),
                ("Python -> Python, shmem-broker loan (filled) / recv_view (not read), 8 msgs", lambda: python_broker(socket, size, n, True, small)),
                ("Python -> Python, shmem-broker loan (filled) / recv_view (not read), 8 MiB", lambda: python_broker(socket, size, n, True, CAPACITY)),
                ("Python -> Python, multiprocessing.shared_memory + 2 semaphores, 8 msgs", lambda: python_shared_memory(size, n, 8)),
                ("Python -> Python, multiprocessing.shared_memory + 2 semaphores, 8 MiB", lambda: python_shared_memory(size, n, slots_8mib)),
                ("Python -> Python, multiprocessing.Pipe", lambda: python_pipe(size, n)),
            ]
            for label, run in cases:
                print(row(label, size, n, measure(args.runs, run)), flush=True)
        for size in SIZES if not args.python_only else []:
            n = max(1, int(NATIVE_COUNT[size] * args.scale))
            for label, program in (("C (libshmem_broker) thread -> thread", c_bench),
                                   ("Rust client thread -> thread", rust_bench)):
                print(row(label, size, n, measure(args.runs, lambda: native(program, socket, size, n))), flush=True)
    finally:
        broker.terminate()
        broker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
