"""64 MiB between Python and C, shmemctl (Rust) and Python, SHA-256 checked; the command line."""

from __future__ import annotations

import signal
import subprocess

import pytest

import shmem_broker
from conftest import c_example, python_cli, shmemctl, transfer


@pytest.mark.parametrize(
    "sender,receiver",
    [
        # Python's default path is zero-copy both ways (loan, borrowed receive); --copy is bytes.
        (python_cli("send"), c_example("recv")),
        (c_example("send"), python_cli("recv")),
        (python_cli("send", "--copy"), shmemctl("recv")),
        (shmemctl("send"), python_cli("recv", "--copy")),
        (python_cli("send"), python_cli("recv")),
    ],
    ids=["py-to-c", "c-to-py", "py-to-rust", "rust-to-py", "py-to-py"],
)
def test_64_mib_across_languages(sender, receiver, channel, big_file, tmp_path):
    transfer([*sender, channel], [*receiver, channel], big_file, tmp_path / "out")


def test_cli_usage_and_failures_exit_as_documented(socket_path):
    usage = subprocess.run(python_cli("sideways"), capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
    missing = subprocess.run(
        python_cli("recv", "no-such-channel"), capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 1, missing
    assert missing.stderr.count("\n") == 1, f"one line: {missing.stderr!r}"
    assert "no-such-channel" in missing.stderr


def test_cli_send_writes_end_of_stream_only_when_stdin_ended(client, channel):
    """An interrupted `send` detaches without end-of-stream: the consumer learns the stream is
    incomplete (ProducerGone), never a clean end."""
    with client.consumer(channel) as consumer:
        sender = subprocess.Popen(
            python_cli("send", "--copy", channel), stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        sender.stdin.write(b"x" * 1000)
        sender.stdin.flush()
        # --copy sends what one read gave: once it arrived, the sender waits for more input.
        assert consumer.recv(timeout=60) == b"x" * 1000
        sender.send_signal(signal.SIGINT)
        _, err = sender.communicate(timeout=30)
        assert sender.returncode == 130, err
        assert err.decode().count("\n") == 1, err
        with pytest.raises(shmem_broker.ProducerGone) as gone:
            consumer.recv(timeout=30)
        assert gone.value.code == -33
