"""gateway.notify against a real AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET is."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.notify import Notifier, Watchdog


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def fill(path: str) -> None:
    """Queue datagrams on ``path`` until the reader's queue is full (a reader that stalled)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sender.sendto(b"FILLER=1", path)


def drain(sock: socket.socket) -> list[str]:
    out: list[str] = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


def test_ready_status_stopping_arrive_as_datagrams(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving 2 meters")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=serving 2 meters"
    assert n.status("draining outbox")
    assert sock.recv(4096).decode() == "STATUS=draining outbox"
    assert n.stopping()
    assert sock.recv(4096).decode() == "STOPPING=1"


def test_abstract_socket_address() -> None:
    name = f"cg-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.address == "\0" + name
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_no_socket_is_a_noop() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False
    wd = Watchdog(n, lambda: True)
    assert not wd.enabled
    asyncio.run(asyncio.wait_for(wd.run(), 1.0))  # returns at once instead of looping
    assert wd.pings == 0


def test_missing_socket_file_is_reported_not_raised(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled and n.watchdog() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_from_environment(env: dict[str, str], expected: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent", **env}).watchdog_interval_s == expected


def test_periodic_pings_while_healthy_and_none_while_unhealthy(
    notify_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 0.05 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    healthy = True
    wd = Watchdog(Notifier(), lambda: healthy)
    assert wd.enabled and wd.interval_s == 0.05

    async def scenario() -> tuple[list[str], list[str]]:
        nonlocal healthy
        task = asyncio.create_task(wd.run())
        # Count pings rather than time: wait until several arrived.
        for _ in range(200):
            await asyncio.sleep(0.01)
            if wd.pings >= 5:
                break
        first = drain(sock)
        healthy = False
        await asyncio.sleep(0.06)  # let any in-flight tick finish
        drain(sock)
        ticks_before = wd.pings
        await asyncio.sleep(0.3)  # about 6 intervals while unhealthy
        second = drain(sock)
        assert wd.pings == ticks_before
        healthy = True
        for _ in range(200):
            await asyncio.sleep(0.01)
            if wd.pings > ticks_before:
                break
        task.cancel()
        return first, second, drain(sock)

    first, second, third = asyncio.run(scenario())
    assert len(first) >= 5 and set(first) == {"WATCHDOG=1"}
    assert second == []
    assert third and set(third) == {"WATCHDOG=1"}  # recovered: pings again


def test_full_socket_drops_counts_and_logs_once_per_episode(
    notify_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody reads: every send returns at once, counted; one warning for the episode, one line when it ends."""
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    fill(path)
    caplog.set_level(logging.INFO, logger="gateway.notify")
    results: list[bool] = []
    # In a thread, so that a blocking send fails this test instead of hanging it.
    worker = threading.Thread(target=lambda: results.extend(n.watchdog() for _ in range(50)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "sd_notify blocked on a full socket"
    assert results == [False] * 50
    assert n.snapshot() == {"enabled": True, "sent": 0, "dropped": 50, "dropping": True, "last_error": "socket full"}
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # one line for the episode, not 50

    drain(sock)
    assert n.status("back") is True
    assert n.snapshot()["dropping"] is False and n.snapshot()["dropped"] == 50
    assert [(r.levelname, r.getMessage()) for r in caplog.records][1:] == [
        ("INFO", "sd_notify: delivering again after 50 dropped notifications")
    ]
    caplog.clear()
    fill(path)
    assert n.watchdog() is False and n.watchdog() is False
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # a new episode: one new warning


def test_absent_socket_is_counted(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.watchdog() is False and n.watchdog() is False
    assert n.snapshot()["dropped"] == 2
    assert n.snapshot()["last_error"] == "No such file or directory"
