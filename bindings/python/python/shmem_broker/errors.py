"""The exceptions of shmem_broker: `ShmemError` and one subclass per kind of failure.

Each carries `code`, the same number as the C library's `SHMEM_ERR_*` (shmem_broker.h), and,
when the broker refused a request, `broker_code`, the broker's own name for the refusal
("no_such_channel", as `shmemctl` and the protocol spell it).
"""

from __future__ import annotations


class ShmemError(Exception):
    """A failure of the broker, the channel or the library."""

    code: int = -98
    broker_code: str | None = None

    def __init__(self, message: str, code: int | None = None, broker_code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.broker_code = broker_code

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgument(ShmemError, ValueError):
    """An argument out of range, or a call on a closed endpoint."""

    code = -1


class BrokerNotRunning(ShmemError, ConnectionError):
    """No broker listens at the socket."""

    code = -2


class BrokerError(ShmemError):
    """The broker refused the request; `broker_code` says why."""

    code = -21


class BadRequest(BrokerError):
    code = -10


class UnsupportedVersion(BrokerError):
    code = -11


class NoSuchChannel(BrokerError, LookupError):
    code = -12


class ChannelExists(BrokerError):
    code = -13


class ChannelBusy(BrokerError):
    """The channel's producer or consumer places are taken."""

    code = -14


class PermissionDenied(BrokerError, PermissionError):
    code = -15


class InvalidName(BrokerError, ValueError):
    code = -16


class InvalidCapacity(BrokerError, ValueError):
    code = -17


class LimitReached(BrokerError):
    code = -18


class Evicted(BrokerError):
    """A durable consumer fell behind while away and was disconnected."""

    code = -19


class NoSuchConsumer(BrokerError, LookupError):
    code = -20


class ChannelDropped(ShmemError):
    """An administrator dropped the channel."""

    code = -30


class Disconnected(ShmemError):
    """The broker disconnected this consumer (it fell behind under policy `disconnect`)."""

    code = -31


class ProducerLost(ShmemError):
    """Fan-out: one producer's ring became unusable; the next receive reads on without it."""

    code = -32


class ProducerGone(ShmemError):
    """The producer went away without end-of-stream (once; the next receive waits on)."""

    code = -33


class EndOfStreamLost(ShmemError):
    """A producer's end-of-stream mark did not fit (policy `drop`); reading on."""

    code = -34


class MessageTooLarge(ShmemError, ValueError):
    code = -35


class CorruptRing(ShmemError):
    """The shared memory is inconsistent: a peer scribbled on it."""

    code = -36


class Busy(ShmemError):
    """The producer has a loan outstanding: send() or abandon() it first."""

    code = -38


class SystemCallError(ShmemError, OSError):
    code = -40


class ProtocolError(ShmemError):
    """The broker said something this library does not understand."""

    code = -41


_BY_CODE: dict[int, type[ShmemError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        BrokerNotRunning,
        BrokerError,
        BadRequest,
        UnsupportedVersion,
        NoSuchChannel,
        ChannelExists,
        ChannelBusy,
        PermissionDenied,
        InvalidName,
        InvalidCapacity,
        LimitReached,
        Evicted,
        NoSuchConsumer,
        ChannelDropped,
        Disconnected,
        ProducerLost,
        ProducerGone,
        EndOfStreamLost,
        MessageTooLarge,
        CorruptRing,
        Busy,
        SystemCallError,
        ProtocolError,
    )
}


def _from_native(code: int, broker_code: str | None, message: str) -> ShmemError:
    """The exception for an error of the native module (called by it)."""
    cls = _BY_CODE.get(code, ShmemError)
    # OSError's constructor takes (errno, strerror): give it the message alone.
    return cls(message, code, broker_code)


__all__ = [name for name, value in globals().items() if isinstance(value, type) and issubclass(value, ShmemError)]
