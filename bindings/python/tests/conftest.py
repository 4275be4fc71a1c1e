"""Fixtures for the shmem_broker tests. They run against a real broker that the Rust test
tests/python_binding.rs starts (its socket in $SHMEM_BROKER_SOCKET), with the real shmemctl
($SHMEMCTL) and the C examples ($SHMEM_CAT_SEND, $SHMEM_CAT_RECV) next to it."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shmem_broker

_names = itertools.count()


def _need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(f"${var} is not set: run these tests through `cargo test --test python_binding`")
    return value


@pytest.fixture(scope="session")
def socket_path() -> str:
    return _need("SHMEM_BROKER_SOCKET")


@pytest.fixture
def client(socket_path: str) -> shmem_broker.Client:
    return shmem_broker.Client(socket_path)


@pytest.fixture
def channel(client: shmem_broker.Client, request: pytest.FixtureRequest) -> str:
    """A fresh one-to-one channel of 1 MiB, dropped afterwards."""
    name = f"py-{request.node.name[:40]}-{os.getpid()}-{next(_names)}".replace("[", "-").replace("]", "")
    client.create(name, capacity=1 << 20)
    yield name
    try:
        client.drop(name)
    except shmem_broker.NoSuchChannel:
        pass


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 MiB of random bytes."""
    path = tmp_path_factory.mktemp("data") / "input"
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def python_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shmem_broker", *args]


def shmemctl(*args: str) -> list[str]:
    return [_need("SHMEMCTL"), "--socket", _need("SHMEM_BROKER_SOCKET"), *args]


def c_example(which: str, *args: str) -> list[str]:
    return [_need("SHMEM_CAT_SEND" if which == "send" else "SHMEM_CAT_RECV"), *args]


def transfer(sender: list[str], receiver: list[str], src: Path, dst: Path) -> None:
    """Runs receiver (to dst) and sender (from src) to the end; both exit 0, dst equals src."""
    with open(dst, "wb") as out, open(src, "rb") as inp:
        rx = subprocess.Popen(receiver, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
        tx = subprocess.Popen(sender, stdin=inp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, tx_err = tx.communicate(timeout=120)
            _, rx_err = rx.communicate(timeout=120)
        finally:
            for p in (tx, rx):
                if p.poll() is None:
                    p.kill()
    assert tx.returncode == 0 and rx.returncode == 0, (
        f"sender {sender} exit {tx.returncode}: {tx_err.decode(errors='replace')}\n"
        f"receiver {receiver} exit {rx.returncode}: {rx_err.decode(errors='replace')}"
    )
    assert sha256(dst) == sha256(src), "output equals input"
