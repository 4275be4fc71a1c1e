"""`python -m shmem_broker send [--copy] CHANNEL < FILE` and `... recv [--copy] CHANNEL > FILE`.

send: standard input into the channel in messages of up to 64 KiB, then end-of-stream (only
once standard input ended: on a failure the producer detaches without it, so the consumers
learn the stream is incomplete). By default each message is read from standard input straight
into the ring (a loan); --copy reads into bytes and sends those.

recv: the channel to standard output until end-of-stream. By default each message is written
from where it lies in the ring (a borrowed receive); --copy receives bytes.

The broker is found as every client finds it ($SHMEM_BROKER_SOCKET, else the default socket).
Exit 0 on success; 1 with one line on standard error on failure; 2 for a usage error.
"""

from __future__ import annotations

import os
import sys

from . import Client, Consumer, Producer
from .errors import ShmemError

CHUNK = 64 * 1024
USAGE = "usage: python -m shmem_broker {send|recv} [--copy] CHANNEL"


def _read_into(view: memoryview) -> int:
    """Fills `view` from standard input; fewer bytes only at its end."""
    got = 0
    while got < len(view):
        with view[got:] as rest:
            n = os.readv(0, [rest])
        if n == 0:
            break
        got += n
    return got


def _write_all(data: memoryview | bytes) -> None:
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            with view[done:] as rest:
                done += os.write(1, rest)


def send(producer: Producer, copy: bool) -> None:
    chunk = min(CHUNK, producer.max_message_len)
    while True:
        if copy:
            data = os.read(0, chunk)
            if not data:
                return
            producer.send(data)
            continue
        view = producer.loan(chunk)
        n = _read_into(view)
        if n == chunk:
            producer.send()
            continue
        # A short last piece: a loan has the length it was made with.
        last = bytes(view[:n])
        producer.abandon()
        if n:
            producer.send(last)
        return


def recv(consumer: Consumer, copy: bool) -> None:
    while True:
        message = consumer.recv() if copy else consumer.recv_view()
        if message is None:
            return
        _write_all(message)


def main(argv: list[str]) -> int:
    args = argv[1:]
    copy = "--copy" in args
    args = [a for a in args if a != "--copy"]
    if len(args) != 2 or args[0] not in ("send", "recv"):
        print(USAGE, file=sys.stderr)
        return 2
    command, channel = args
    try:
        client = Client()
        if command == "send":
            # Leaving the block by an exception detaches without end-of-stream.
            with client.producer(channel) as producer:
                send(producer, copy)
        else:
            with client.consumer(channel) as consumer:
                recv(consumer, copy)
    except (ShmemError, OSError) as err:
        print(f"shmem_broker {command}: {channel}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"shmem_broker {command}: {channel}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
