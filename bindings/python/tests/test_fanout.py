"""Fan-out to three Python consumer processes, and a consumer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import shmem_broker
from conftest import python_cli, sha256


def wait_for_consumers(client: shmem_broker.Client, channel: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        peers = client.info(channel)["peers"]
        if sum(1 for p in peers if p["role"] == "consumer") == count:
            return
        assert time.monotonic() < deadline, f"{count} consumers never attached: {peers}"
        time.sleep(0.05)


def produce(client, channel, src, chunk=65536):
    with client.producer(channel) as producer, open(src, "rb") as f:
        while block := f.read(chunk):
            producer.send(block)


def test_fan_out_to_three_python_consumers(client, big_file, tmp_path):
    client.create("py-fanout", capacity=1 << 20, max_consumers=3)
    try:
        outputs = [tmp_path / f"out{i}" for i in range(3)]
        consumers = [
            subprocess.Popen(python_cli("recv", "py-fanout"), stdout=open(out, "wb"), stderr=subprocess.PIPE)
            for out in outputs
        ]
        wait_for_consumers(client, "py-fanout", 3)
        produce(client, "py-fanout", big_file)
        for proc in consumers:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        expected = sha256(big_file)
        assert [sha256(out) for out in outputs] == [expected] * 3
    finally:
        client.drop("py-fanout")


def test_a_consumer_killed_with_sigkill_does_not_stop_the_others(client, big_file, tmp_path):
    """Policy block: a consumer that stops reading holds the producer back until the broker
    sees it die; then the producer goes on and the survivor gets every byte."""
    client.create("py-killed", capacity=256 << 10, max_consumers=2, slow_consumer="block")
    try:
        victim = subprocess.Popen(
            python_cli("recv", "py-killed"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        survivor_out = tmp_path / "survivor"
        survivor = subprocess.Popen(
            python_cli("recv", "py-killed"), stdout=open(survivor_out, "wb"), stderr=subprocess.PIPE
        )
        wait_for_consumers(client, "py-killed", 2)
        # The victim's stdout is a pipe nobody reads: it soon stops reading the channel too,
        # and the producer blocks on its ring until the kill.
        timer = threading.Timer(1.0, lambda: os.kill(victim.pid, signal.SIGKILL))
        timer.start()
        try:
            produce(client, "py-killed", big_file)
        finally:
            timer.join()
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        _, err = survivor.communicate(timeout=120)
        assert survivor.returncode == 0, err
        assert sha256(survivor_out) == sha256(big_file)
        # The broker is still serving, and the victim's place is free again.
        wait_for_consumers(client, "py-killed", 0)
    finally:
        client.drop("py-killed")
