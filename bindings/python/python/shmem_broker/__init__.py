"""Attach to shmem-broker channels: named shared-memory rings handed out by a broker daemon.

    import shmem_broker

    client = shmem_broker.Client()              # $SHMEM_BROKER_SOCKET or the system socket
    with client.producer("frames") as producer:  # end-of-stream when the block ends normally
        producer.send(b"hello")
        view = producer.loan(4)                  # zero-copy: write in place, then publish
        view[:] = b"abcd"
        producer.send()

    with client.consumer("frames") as consumer:
        for message in consumer:                 # bytes, until end-of-stream
            print(message)

Every waiting call lets go of the GIL while it waits. Errors are `ShmemError` subclasses
carrying the broker's code (see `shmem_broker.errors`).
"""

from ._native import Client, Consumer, Producer
from .errors import (
    BrokerError,
    BrokerNotRunning,
    ChannelBusy,
    ChannelDropped,
    ChannelExists,
    Disconnected,
    EndOfStreamLost,
    InvalidArgument,
    MessageTooLarge,
    NoSuchChannel,
    PermissionDenied,
    ProducerGone,
    ProducerLost,
    ShmemError,
)

__all__ = [
    "BrokerError",
    "BrokerNotRunning",
    "ChannelBusy",
    "ChannelDropped",
    "ChannelExists",
    "Client",
    "Consumer",
    "Disconnected",
    "EndOfStreamLost",
    "InvalidArgument",
    "MessageTooLarge",
    "NoSuchChannel",
    "PermissionDenied",
    "Producer",
    "ProducerGone",
    "ProducerLost",
    "ShmemError",
]
