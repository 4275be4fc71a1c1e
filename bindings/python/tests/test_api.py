"""The Python API: end-of-stream, zero-copy loans and borrowed receives (and that their
memoryviews die with them), errors, fileno with select/asyncio, the GIL, channel requests."""

from __future__ import annotations

import asyncio
import gc
import select
import threading
import time

import numpy
import pytest

import shmem_broker


def test_send_recv_iterate_and_end_of_stream(client, channel):
    with client.consumer(channel) as consumer:
        with client.producer(channel) as producer:
            producer.send(b"one")
            producer.send(bytearray(b"two"))
            producer.send(memoryview(b"xthreex")[1:-1])
            producer.send(numpy.arange(4, dtype=numpy.uint8))
            producer.send(b"")
        # Leaving the block normally wrote end-of-stream.
        assert list(consumer) == [b"one", b"two", b"three", bytes([0, 1, 2, 3]), b""]


def test_exit_by_exception_means_no_end_of_stream(client, channel):
    with client.consumer(channel) as consumer:
        with pytest.raises(RuntimeError):
            with client.producer(channel) as producer:
                producer.send(b"partial")
                raise RuntimeError("the producer failed")
        assert consumer.recv(timeout=30) == b"partial"
        with pytest.raises(shmem_broker.ProducerGone) as gone:
            consumer.recv(timeout=30)
        assert gone.value.code == -33


def test_recv_timeout(client, channel):
    with client.consumer(channel) as consumer, client.producer(channel):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            consumer.recv(timeout=0.2)
        assert 0.15 < time.monotonic() - start < 5
        with pytest.raises(TimeoutError):
            consumer.recv(timeout=0)
        with pytest.raises(ValueError):
            consumer.recv(timeout=-1)


def test_loan_is_published_by_send_and_its_view_dies_with_it(client, channel):
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        view = producer.loan(8)
        assert not view.readonly and len(view) == 8
        view[:] = b"zerocopy"
        owner = view.obj
        producer.send()
        # The memoryview is released: touching it raises instead of writing into the ring.
        with pytest.raises(ValueError):
            view[0] = 0x41
        with pytest.raises(ValueError):
            bytes(view)
        # And no new view can be made of the published bytes through its owner.
        with pytest.raises(BufferError):
            memoryview(owner)
        assert consumer.recv(timeout=30) == b"zerocopy"
        # Nothing wrote into the published message after send.
        producer.send(b"next")
        assert consumer.recv(timeout=30) == b"next"


def test_loan_with_live_views_cannot_be_published(client, channel):
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        view = producer.loan(4)
        part = view[1:]
        array = numpy.frombuffer(view, dtype=numpy.uint8)
        array[:] = [1, 2, 3, 4]
        with pytest.raises(BufferError):
            producer.send()
        del array
        # The handed-out view was released on the first try; the slice lives on.
        with pytest.raises(BufferError):
            producer.send()
        part[0] = 9
        part.release()
        producer.send()
        assert consumer.recv(timeout=30) == bytes([1, 9, 3, 4])


def test_loan_busy_abandon_and_misuse(client, channel):
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        view = producer.loan(3)
        with pytest.raises(shmem_broker.ShmemError) as busy:
            producer.send(b"other")
        assert busy.value.code == -38
        with pytest.raises(shmem_broker.ShmemError):
            producer.loan(3)
        view[:] = b"abc"
        producer.abandon()
        with pytest.raises(ValueError):
            view[0] = 1
        with pytest.raises(shmem_broker.InvalidArgument):
            producer.send()
        producer.send(b"real")
        assert consumer.recv(timeout=30) == b"real"


def test_a_loan_view_outliving_its_producer_stays_mapped(client, channel):
    """Deleting the producer while a numpy array still points into its loan must not unmap the
    memory under the array (the view keeps the ring alive)."""
    producer = client.producer(channel)
    view = producer.loan(16)
    array = numpy.frombuffer(view, dtype=numpy.uint8)
    del view, producer
    gc.collect()
    array[:] = 7  # would crash if the ring were unmapped
    assert array.sum() == 7 * 16
    del array
    gc.collect()
    # The producer is gone now (without end-of-stream): another can attach, once the broker
    # has seen the first one's connection close.
    deadline = time.monotonic() + 30
    while True:
        try:
            again = client.producer(channel)
            break
        except shmem_broker.ChannelBusy:
            assert time.monotonic() < deadline, "the first producer never detached"
            time.sleep(0.05)
    with again:
        again.send(b"ok")


def test_borrowed_receive_is_read_only_zero_copy_and_dies_with_the_borrow(client, channel):
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        producer.send(bytes(range(16)))
        producer.send(b"second")
        view = consumer.recv_view(timeout=30)
        assert view.readonly
        with pytest.raises(TypeError):
            view[0] = 1
        with pytest.raises((BufferError, TypeError)):
            _writable(view.obj)
        array = numpy.frombuffer(view, dtype=numpy.uint8)
        assert not array.flags.owndata and not array.flags.writeable
        assert array.tolist() == list(range(16))
        # A live array pins the message: the next receive refuses rather than free it.
        with pytest.raises(BufferError):
            consumer.recv(timeout=30)
        del array
        assert consumer.recv(timeout=30) == b"second"
        with pytest.raises(ValueError):
            view[0]


def _writable(obj):
    """Asks for a writable buffer of `obj` (what ctypes.from_buffer does)."""
    import ctypes

    return (ctypes.c_char * 1).from_buffer(obj)


def test_borrowed_view_as_context_manager_and_release(client, channel):
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        for i in range(100):
            producer.send(bytes([i]) * 1000)
        total = 0
        for _ in range(100):
            with consumer.recv_view(timeout=30) as view:
                total += view[0]
        consumer.release()
        assert total == sum(range(100))


def test_errors_carry_codes(client, channel, socket_path, tmp_path):
    with pytest.raises(shmem_broker.NoSuchChannel) as missing:
        client.producer("no-such-channel")
    assert missing.value.code == -12
    assert missing.value.broker_code == "no_such_channel"
    assert isinstance(missing.value, shmem_broker.BrokerError)
    with pytest.raises(shmem_broker.ChannelExists) as exists:
        client.create(channel)
    assert exists.value.broker_code == "channel_exists"
    with pytest.raises(shmem_broker.BrokerNotRunning) as down:
        shmem_broker.Client(tmp_path / "nobody.sock")
    assert down.value.code == -2
    with client.producer(channel) as producer:
        with pytest.raises(shmem_broker.ChannelBusy):
            client.producer(channel)
        with pytest.raises(shmem_broker.MessageTooLarge):
            producer.send(bytes(producer.max_message_len + 1))
    with pytest.raises(shmem_broker.InvalidArgument):
        client.create("x", slow_consumer="sometimes")
    producer = client.producer(channel)
    producer.close()
    producer.close()
    with pytest.raises(shmem_broker.InvalidArgument):
        producer.send(b"after close")


def test_list_info_create_drop(client):
    info = client.create("py-requests", capacity=65536, max_consumers=3, slow_consumer="drop")
    assert info["name"] == "py-requests"
    assert client.create("py-requests", exist_ok=True)["name"] == "py-requests"
    assert "py-requests" in [c["name"] for c in client.list()]
    assert client.info("py-requests")["capacity"] == 65536
    client.drop("py-requests")
    with pytest.raises(shmem_broker.NoSuchChannel):
        client.info("py-requests")


def test_dropped_channel_ends_a_waiting_consumer(client):
    client.create("py-dropped", capacity=65536)
    with client.consumer("py-dropped") as consumer:
        threading.Timer(0.3, lambda: shmem_broker.Client(client.socket).drop("py-dropped")).start()
        with pytest.raises(shmem_broker.ChannelDropped):
            consumer.recv(timeout=30)


def test_fileno_with_select(client, channel):
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        with pytest.raises(TimeoutError):
            consumer.recv(timeout=0)
        readable, _, _ = select.select([consumer], [], [], 0.1)
        assert readable == []
        producer.send(b"wake")
        readable, _, _ = select.select([consumer], [], [], 30)
        assert readable == [consumer]
        assert consumer.recv(timeout=0) == b"wake"


def test_fileno_of_a_closed_endpoint_raises(client, channel):
    """After close() the endpoint's fd is closed and its number free for the next open file:
    fileno() raises ValueError, as a closed Python file's does, instead of handing it out."""
    consumer = client.consumer(channel)
    producer = client.producer(channel)
    assert consumer.fileno() >= 0 and producer.fileno() >= 0
    producer.close()
    consumer.close()
    for endpoint in (producer, consumer):
        with pytest.raises(ValueError):
            endpoint.fileno()
        with pytest.raises(ValueError):
            select.select([endpoint], [], [], 0)
    # Detaching (how a `with` block left by an exception ends a producer) closes it as well.
    producer = client.producer(channel)
    with pytest.raises(RuntimeError):
        with producer:
            raise RuntimeError("leaves the block")
    with pytest.raises(ValueError):
        producer.fileno()


def test_send_takes_buffers_of_any_item_type(client, channel):
    """numpy arrays and array.array of wider items are bytes-like too: sent as their bytes."""
    import array

    floats = numpy.linspace(0, 1, 5, dtype=numpy.float32)
    ints = array.array("i", [1, -2, 3])
    with client.consumer(channel) as consumer:
        with client.producer(channel) as producer:
            producer.send(floats)
            producer.send(ints)
            producer.send(numpy.arange(6, dtype=numpy.int64).reshape(2, 3))
            with pytest.raises(TypeError):
                producer.send(numpy.arange(8, dtype=numpy.int32)[::2])  # not contiguous
            producer.send(b"still usable")
        assert list(consumer) == [
            floats.tobytes(),
            ints.tobytes(),
            numpy.arange(6, dtype=numpy.int64).tobytes(),
            b"still usable",
        ]


def test_send_timeout_and_producer_fileno(client, channel):
    """A ring nobody reads fills: send(timeout=0) raises TimeoutError; the producer's fd turns
    readable once the consumer makes room, and the send goes through."""
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        block = bytes(64 << 10)
        sent = 0
        with pytest.raises(TimeoutError):
            for _ in range(1000):
                producer.send(block, timeout=0)
                sent += 1
        assert 0 < sent < 1000
        assert select.select([producer], [], [], 0.1)[0] == []
        assert consumer.recv(timeout=30) == block
        assert select.select([producer], [], [], 30)[0] == [producer]
        producer.send(block, timeout=0)
        # Drained, so that closing finds room for the end-of-stream mark.
        for _ in range(sent):
            assert consumer.recv(timeout=30) == block


def test_fileno_with_asyncio_add_reader(client, channel):
    async def main():
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        done = asyncio.Event()
        consumer = client.consumer(channel)

        def on_readable():
            while True:
                try:
                    message = consumer.recv(timeout=0)
                except TimeoutError:
                    return
                if message is None:
                    done.set()
                    return
                got.append(message)

        loop.add_reader(consumer.fileno(), on_readable)
        on_readable()

        def produce():
            with client.producer(channel) as producer:
                for i in range(50):
                    producer.send(b"%d" % i)

        await loop.run_in_executor(None, produce)
        await asyncio.wait_for(done.wait(), 30)
        loop.remove_reader(consumer.fileno())
        consumer.close()
        return got

    assert asyncio.run(main()) == [b"%d" % i for i in range(50)]


def test_the_gil_is_released_while_recv_waits(client, channel):
    counter = 0
    stop = threading.Event()

    def spin():
        nonlocal counter
        while not stop.is_set():
            counter += 1

    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        threading.Timer(1.0, lambda: producer.send(b"late")).start()
        spinner = threading.Thread(target=spin)
        spinner.start()
        try:
            before = counter
            assert consumer.recv() == b"late"
            during = counter - before
        finally:
            stop.set()
            spinner.join()
    # A second of pure-Python counting: hundreds of thousands if it ran, ~0 if recv held the GIL.
    assert during > 10_000, during


def test_borrowed_memory_cannot_be_written_by_numpy(client, channel):
    with client.consumer(channel) as consumer, client.producer(channel) as producer:
        producer.send(b"12345678")
        view = consumer.recv_view(timeout=30)
        array = numpy.frombuffer(view, dtype=numpy.uint8)
        with pytest.raises(ValueError):
            array[0] = 0
        del array
        consumer.release()


def test_durable_consumer_keeps_its_queue_while_away(client):
    client.create("py-durable", capacity=65536, max_consumers=2)
    try:
        with client.consumer("py-durable", durable="keeper") as consumer:
            assert consumer.channel == "py-durable"
        with client.producer("py-durable") as producer:
            producer.send(b"while away")
        with client.consumer("py-durable", durable="keeper") as consumer:
            assert consumer.recv(timeout=30) == b"while away"
            assert consumer.recv(timeout=30) is None
    finally:
        client.drop("py-durable")


def test_reconnect_is_accepted(client, channel):
    with client.consumer(channel, reconnect=True) as consumer:
        with client.producer(channel, reconnect=True) as producer:
            producer.send(b"r")
        assert list(consumer) == [b"r"]
