"""``gateway demo`` as a new user runs it: a taken web port, the referral example, a loud line when its broker
dies. The demo runs as a real subprocess (its own broker, receiver, emulated meter and camera, the daemon)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.broker import MosquittoBroker, mosquitto_available, wait_until

from gateway.emulate.platform import Receiver

DEMO_START_S = 240.0
"""How long a demo may take to start before the test gives up on it (a bound, never a measured time)."""

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed (scripts/setup)")

REPO = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--state-dir", str(tmp_path / "demo"), "--no-ble", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        yield busy.getsockname()[1]


def test_a_taken_web_port_is_a_clear_error_naming_the_option(tmp_path: Path, taken_port: int) -> None:
    """Issue 14: with its port taken the demo printed the address anyway and ran without pages."""
    demo = _demo(tmp_path, "--web-port", str(taken_port), "--duration", "30")
    out, err = demo.communicate(timeout=DEMO_START_S)
    assert demo.returncode != 0
    assert "--web-port" in err and f"127.0.0.1:{taken_port}" in err
    assert f"http://127.0.0.1:{taken_port}/" not in out  # never announces pages it cannot serve


class _Lines:
    """The demo's stdout, read by a thread, so that the test can wait on a line appearing."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True).start()

    def text(self) -> str:
        return "".join(self.lines)


def test_the_demo_prints_a_referral_example_and_shouts_when_its_broker_dies(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = _demo(tmp_path, "--web-port", str(port), "--duration", "300")
    out = _Lines(demo)
    try:
        # The demo starts a broker, a receiver, emulators, the model and the pages: on a loaded 2-core runner that
        # has taken over a minute, so the bound is generous (it only limits how long a broken demo is waited for).
        wait_until(
            lambda: "Ctrl-C stops the demo" in out.text() or demo.poll() is not None,
            timeout_s=DEMO_START_S,
            what="the demo banner",
        )
        text = out.text()
        assert "gateway receiver refer --host 127.0.0.1 --port" in text and "--site-id chc-demo" in text
        assert "--decision refer_routine" in text
        pid = int(text.split("loopback, pid ", 1)[1].split(")", 1)[0])
        os.kill(pid, signal.SIGKILL)  # the demo's own mosquitto (its pid as the demo printed it)
        wait_until(lambda: "!!! demo: the demo's broker" in out.text(), what="the loud line")
        assert "STOPPED" in out.text()
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()


def test_the_demo_shouts_when_its_platform_receiver_dies(
    tmp_path: Path,
    broker: MosquittoBroker,
    receiver_factory: Callable[..., Receiver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 14: when its broker or receiver died the demo said nothing beyond repeated warnings. The demo's
    watcher over a real receiver on a real mosquitto: the receiver stops -> one loud line (stdout and stderr)."""
    from gateway import demo

    stack = demo.DemoStack(tmp_path / "demo", 0, with_ble=False)
    stack.broker, stack.receiver = broker, receiver_factory(broker)
    wait_until(lambda: stack.receiver.alive, what="the receiver running")

    async def scenario() -> str:
        watcher = asyncio.create_task(demo.watch_parts(stack, interval_s=0.05))
        seen = ""
        try:
            await asyncio.sleep(0.2)  # a few rounds with everything up: nothing said
            seen += capsys.readouterr().err
            assert "!!!" not in seen
            stack.receiver.stop()
            deadline = time.monotonic() + 30  # a wedge detector, not a speed check
            while "receiver has STOPPED" not in seen and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                seen += capsys.readouterr().err
        finally:
            watcher.cancel()
        return seen

    said = asyncio.run(scenario())
    assert said.count("!!! demo: the demo's platform receiver has STOPPED") == 1, said
