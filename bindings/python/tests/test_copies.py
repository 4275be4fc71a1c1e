"""What each path copies, and that the fast paths keep their promises: recv() copies a message
once, from where it lies in the ring into a new bytes object (exactly the message, across the
ring's wrap, empty ones included); send() copies any C-contiguous buffer once, straight into
the ring, with the GIL held for small messages and without it for large ones; a loan written
in place is published holding the GIL, a fan-out loan without it; every wait still lets go of
the GIL and honours its timeout; a producer that rewrites a published message while the
consumer copies it garbles only that message."""

from __future__ import annotations

import ctypes
import random
import threading
import time

import numpy
import pytest


def _messages(count: int, seed: int) -> list[bytes]:
    """Messages of lengths from 0 to 200 KiB (many more bytes than the 1 MiB ring holds, so
    it wraps several times), each with its own content."""
    rng = random.Random(seed)
    sizes = [0, 1, 7, 8, 9, 4095, 4096, 65535, 65536, 65537, 200 << 10]
    return [rng.randbytes(rng.choice(sizes)) for _ in range(count)]


def test_recv_returns_exactly_each_message_across_the_wrap(client, channel):
    messages = _messages(300, seed=1)
    assert sum(map(len, messages)) > 4 << 20
    got: list[bytes] = []
    with client.consumer(channel) as consumer:
        with client.producer(channel) as producer:
            # Sent as bytes, bytearray, memoryview and numpy in turn: every source path.
            kinds = [bytes, bytearray, memoryview, lambda m: numpy.array(bytearray(m), dtype=numpy.uint8)]
            for i, message in enumerate(messages):
                producer.send(kinds[i % 4](message), timeout=30)
                # Received one behind, so the ring holds two messages at once (and the
                # producer never waits for this thread's receive).
                if i >= 1:
                    got.append(consumer.recv(timeout=30))
            while len(got) < len(messages):
                got.append(consumer.recv(timeout=30))
        assert consumer.recv(timeout=30) is None
    assert [len(m) for m in got] == [len(m) for m in messages]
    assert got == messages
    assert all(type(m) is bytes for m in got)


def test_iteration_and_recv_view_see_the_same_bytes_across_the_wrap(client, channel):
    messages = _messages(120, seed=2)

    def produce():
        with client.producer(channel) as producer:
            for message in messages:
                producer.send(message, timeout=30)

    with client.consumer(channel) as consumer:
        thread = threading.Thread(target=produce)
        thread.start()
        got = []
        for i in range(len(messages)):
            if i % 2:
                got.append(consumer.recv(timeout=30))
            else:
                view = consumer.recv_view(timeout=30)
                got.append(bytes(view))
                view.release()
        got.extend(consumer)
        thread.join()
    assert got == messages


def test_a_large_send_of_a_mutable_buffer_is_copied_once_and_intact(client, channel):
    """A bytearray and a numpy array of 512 KiB (over the size copied without the GIL) and
    of 1 KiB (copied holding it)."""
    big = bytearray(random.Random(3).randbytes(512 << 10))
    array = numpy.frombuffer(random.Random(4).randbytes(512 << 10), dtype=numpy.float64).copy()
    small = bytearray(b"s" * 1024)
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        producer.send(big, timeout=30)
        assert consumer.recv(timeout=30) == big
        producer.send(array, timeout=30)
        assert consumer.recv(timeout=30) == array.tobytes()
        producer.send(small, timeout=30)
        assert consumer.recv(timeout=30) == small
        # The buffers are not held after the send: a bytearray can be resized again.
        big.extend(b"x")
        small.extend(b"x")


def test_fan_out_loans_are_published_to_every_consumer(client):
    """With two consumers a loan is the producer's private buffer copied into each ring at
    send() (which may wait, so it runs without the GIL); both get it whole."""
    name = f"py-copies-fanout-{time.monotonic_ns()}"
    client.create(name, capacity=1 << 20, max_consumers=2)
    try:
        with client.consumer(name) as first, client.consumer(name) as second:
            with client.producer(name) as producer:
                for i in range(40):
                    view = producer.loan(64 << 10)
                    view[:] = bytes([i]) * (64 << 10)
                    producer.send()
                    assert first.recv(timeout=30) == bytes([i]) * (64 << 10)
                    assert second.recv(timeout=30) == bytes([i]) * (64 << 10)
    finally:
        client.drop(name)


def _spinner():
    """A thread counting in pure Python until stopped: it counts only while it has the GIL."""
    state = {"count": 0, "stop": threading.Event()}

    def spin():
        while not state["stop"].is_set():
            state["count"] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    return state, thread


def _fill(producer, block: bytes) -> int:
    sent = 0
    with pytest.raises(TimeoutError):
        for _ in range(10_000):
            producer.send(block, timeout=0)
            sent += 1
    return sent


@pytest.mark.parametrize("how", ["send", "loan"])
def test_the_gil_is_released_while_send_or_loan_waits_for_room(client, channel, how):
    # Under the size copied without the GIL, so only the wait can let go of it.
    block = bytes(16 << 10)
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        sent = _fill(producer, block)
        # The ring is full: the call waits until the timer's recv makes room.
        timer = threading.Timer(1.0, lambda: consumer.recv(timeout=30))
        timer.start()
        state, thread = _spinner()
        try:
            before = state["count"]
            start = time.monotonic()
            if how == "send":
                producer.send(block, timeout=30)
            else:
                view = producer.loan(len(block), timeout=30)
                view[:] = block
                producer.send()
            waited = time.monotonic() - start
            during = state["count"] - before
        finally:
            state["stop"].set()
            thread.join()
            timer.join()
        assert waited > 0.5, waited
        assert during > 10_000, during
        for _ in range(sent):
            assert consumer.recv(timeout=30) == block


def test_loan_and_send_timeouts_are_honoured(client, channel):
    block = bytes(64 << 10)
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        sent = _fill(producer, block)
        for call in (lambda t: producer.send(block, timeout=t), lambda t: producer.loan(len(block), timeout=t)):
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                call(0.2)
            assert 0.15 < time.monotonic() - start < 5
        for _ in range(sent):
            assert consumer.recv(timeout=30) == block


def test_a_message_rewritten_while_it_is_copied_garbles_only_itself(client, channel):
    """A hostile producer rewrites a published message while the consumer copies it: here the
    producer keeps writing into the ring bytes of a message it already sent (through the
    loan's address, kept with ctypes), from another thread, while recv() copies it. The
    consumer gets a message of the right length whose every byte is one of the values
    written, no crash, and the messages after it intact."""
    size = 256 << 10
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        view = producer.loan(size)
        view[:] = b"\x01" * size
        exported = ctypes.c_char.from_buffer(view)
        address = ctypes.addressof(exported)
        del exported  # its export of the view ends, so send() can end the loan
        producer.send()
        stop = threading.Event()
        rounds = 0

        def rewrite():
            nonlocal rounds
            value = 2
            while not stop.is_set():
                # ctypes lets go of the GIL for the call: it runs while recv() copies.
                ctypes.memset(address, value, size)
                value = 2 + (value - 1) % 250
                rounds += 1

        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            # Let it write a while before the copy starts.
            time.sleep(0.05)
            garbled = consumer.recv(timeout=30)
        finally:
            stop.set()
            writer.join()
        assert rounds > 0
        assert len(garbled) == size and type(garbled) is bytes
        assert set(garbled) <= set(range(1, 252))
        # The next messages are unaffected (their bytes are elsewhere in the ring).
        for i in range(20):
            producer.send(bytes([i]) * 1000)
            assert consumer.recv(timeout=30) == bytes([i]) * 1000


def test_recv_of_an_empty_message_and_end_of_stream(client, channel):
    with client.consumer(channel) as consumer:
        with client.producer(channel) as producer:
            producer.send(b"")
            producer.send(bytearray())
            view = producer.loan(0)
            producer.send()
            del view
        assert consumer.recv(timeout=30) == b""
        assert consumer.recv(timeout=30) == b""
        assert consumer.recv(timeout=30) == b""
        assert consumer.recv(timeout=30) is None


_SEND_WHILE_CLOSING = r"""
import sys, threading, time
import shmem_broker
socket, channel = sys.argv[1], sys.argv[2]
client = shmem_broker.Client(socket)
block = bytes(16 << 10)
with client.consumer(channel) as consumer:
    producer = client.producer(channel)
    sent = 0
    try:
        while True:
            producer.send(block, timeout=0)
            sent += 1
    except TimeoutError:
        pass
    # close() waits for room for end-of-stream, holding the producer's lock without the GIL.
    closer = threading.Thread(target=producer.close)
    closer.start()
    time.sleep(0.3)
    outcome = []
    def send():
        try:
            producer.send(b"x", timeout=30)
            outcome.append("sent")
        except shmem_broker.ShmemError as err:
            outcome.append(type(err).__name__)
    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.3)
    # This thread needs the GIL to make room: it gets it only if the sender, waiting for the
    # producer's lock, let go of it.
    got = [consumer.recv(timeout=30) for _ in range(sent)]
    closer.join(30)
    sender.join(30)
    assert not closer.is_alive() and not sender.is_alive()
    assert got == [block] * sent
    assert consumer.recv(timeout=30) is None, "end-of-stream after the last message"
    print(outcome[0])
"""


def test_a_send_while_close_waits_for_room_does_not_hang_the_interpreter(socket_path, channel):
    """close() waits for room for its end-of-stream holding the producer's lock (without the
    GIL); a send() from another thread meanwhile must wait for that lock without the GIL too,
    or the consumer thread that would make the room never runs and every thread hangs. Run in
    a child process, so that a hang fails the test instead of stopping the run."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _SEND_WHILE_CLOSING, socket_path, channel],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    # The send came after close: refused, not lost in a closed stream.
    assert done.stdout.strip() != "sent", done.stdout


_RECV_OUT_OF_MEMORY = r"""
import hashlib, resource, sys
import shmem_broker
socket, channel, digest, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")

consumer = shmem_broker.Client(socket).consumer(channel)
_, hard = resource.getrlimit(resource.RLIMIT_AS)
# Room to go on working (exceptions, formatting) but not for a bytes object of the message.
resource.setrlimit(resource.RLIMIT_AS, (address_space() + size // 3, hard))
failed = []
for receive in (lambda: consumer.recv(timeout=10), lambda: next(consumer)):
    try:
        got = receive()
    except MemoryError:
        failed.append("MemoryError")
    else:
        failed.append(f"got {len(got)} bytes")
resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
assert failed == ["MemoryError", "MemoryError"], failed
big = consumer.recv(timeout=10)
assert big is not None and len(big) == size, f"the big message is gone: got {big[:20]!r}"
assert hashlib.sha256(big).hexdigest() == digest, "the big message came back damaged"
del big
assert next(consumer) == b"small", "the small message after it"
consumer.close()
print("ok")
"""


def test_a_recv_that_runs_out_of_memory_leaves_the_message_for_the_next(client, socket_path):
    """recv() borrows the message, then makes its bytes object: when that fails (MemoryError,
    here under an address-space limit in a child process), the message must stay for the next
    receive, by recv() and by iteration, not be released and lost (the next recv() used to
    return the message after it)."""
    import hashlib
    import os
    import subprocess
    import sys

    size = 48 << 20
    name = f"py-oom-{os.getpid()}"
    client.create(name, capacity=64 << 20)
    try:
        big = os.urandom(size)
        with client.producer(name) as producer:
            producer.send(big, timeout=30)
            producer.send(b"small", timeout=30)
        digest = hashlib.sha256(big).hexdigest()
        del big
        done = subprocess.run(
            [sys.executable, "-c", _RECV_OUT_OF_MEMORY, socket_path, name, digest, str(size)],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    finally:
        client.drop(name)
