"""``gateway demo``: the whole gateway on one laptop, with nothing but loopback.

Starts a private mosquitto, the reference platform receiver, emulated meters (serial on a pty, BLE on an
emulated BlueZ when dbus-daemon and bluezoo are available, with a two-user Bluetooth blood pressure cuff beside
the glucose meter) and an emulated fundus camera, then runs the real
daemon against them with ``config/demo.toml``, prints the page URL, the demo logins and how to send a grader's
referral decision down, and reports what reaches the platform until Ctrl-C (or ``--duration``). Demo data
lives in ``state/demo`` (git-ignored).

A demo that cannot serve its pages does not run without them: a taken ``--web-port`` is said at once (exit 2),
and so is a web component that fails to start later. When the demo's broker or receiver dies, a loud line
says so (the gateway keeps everything meanwhile; the status page turns amber, then red).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, parse_config
from gateway.emulate.broker import BrokerOptions, MosquittoBroker
from gateway.logs import setup_logging

_logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "config" / "demo.toml"
DEMO_USERS = (("nurse", "nurse"), ("tech", "technician"), ("it", "it"), ("admin", "admin"))
EXIT_PORT_TAKEN = 2
WATCH_INTERVAL_S = 1.0


def _say(text: str) -> None:
    print(text, flush=True)


def _shout(text: str) -> None:
    """A line nobody watching the demo can miss (stdout, where the rest goes, and stderr)."""
    line = f"!!! demo: {text}"
    print(line, flush=True)
    print(line, file=sys.stderr, flush=True)


def port_taken(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be listened on (as waitress would, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def port_taken_message(host: str, port: int) -> str:
    """The one message for a taken web port (the pre-check and a web component that fails later)."""
    return (
        f"gateway demo: the pages cannot listen on {host}:{port} (the port is taken); "
        f"choose another with --web-port, e.g. --web-port {port + 1}"
    )


class DemoStack:
    """Everything the demo starts besides the daemon, stopped in reverse order."""

    def __init__(self, state_dir: Path, web_port: int, *, with_ble: bool) -> None:
        self.state_dir = state_dir
        self.web_port = web_port
        self.with_ble = with_ble
        self._stops: list[Callable[[], None]] = []
        self.overrides: dict[str, Any] = {}
        self.receiver: Any = None
        self.broker: MosquittoBroker | None = None

    def _set(self, dotted: str, value: Any) -> None:
        node = self.overrides
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._set("gateway.state_dir", str(self.state_dir))
        self._set("web.port", self.web_port)
        self._start_broker()
        self._start_receiver()
        self._start_serial_meter()
        if self.with_ble:
            self._start_ble_meter()
        else:
            self._set("meters.ble.enabled", False)
        self._start_camera()

    def stop(self) -> None:
        while self._stops:
            with contextlib.suppress(Exception):
                self._stops.pop()()

    # -- the parts ---------------------------------------------------------------------------
    def _start_broker(self) -> None:
        broker = MosquittoBroker(self.state_dir / "broker", BrokerOptions(persistence=True))
        broker.start()
        self.broker = broker
        self._stops.append(broker.stop)
        self._set("forward.host", broker.host)
        self._set("forward.port", broker.port)
        pid = broker.process.pid if broker.process is not None else "?"
        _say(f"  broker     mosquitto on {broker.host}:{broker.port} (private, loopback, pid {pid})")

    def _start_receiver(self) -> None:
        from gateway.emulate.platform import Receiver

        receiver = Receiver.for_demo(
            self.overrides["forward"]["host"], self.overrides["forward"]["port"], self.state_dir / "platform.db"
        )
        receiver.start()
        self.receiver = receiver
        self._stops.append(receiver.stop)
        _say(f"  platform   reference receiver storing to {self.state_dir / 'platform.db'}")

    def _start_serial_meter(self) -> None:
        from gateway.emulate.serial_meter import start_demo_meter

        meter = start_demo_meter(self.state_dir)
        self._stops.append(meter.stop)
        self._set("meters.serial.ports", [str(meter.port)])
        _say(f"  meter      emulated {meter.describe()} on {meter.port}")

    def _start_ble_meter(self) -> None:
        from gateway.emulate.ble_meter import start_demo_ble

        try:
            ble = start_demo_ble(self.state_dir)
        except Exception as exc:  # the demo goes on without BLE; say why
            _say(f"  ble        emulated Bluetooth meter not started: {exc}")
            self._set("meters.ble.enabled", False)
            return
        self._stops.append(ble.stop)
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = ble.bus_address
        self._set("meters.ble.adapter", ble.gateway_adapter)
        _say(f"  ble        emulated Glucose Service meter {ble.describe()} on a private BlueZ")
        self._start_cuff(ble.env)

    def _start_cuff(self, env: Any) -> None:
        from gateway.emulate.ble_cuff import start_demo_cuff

        try:
            cuff = start_demo_cuff(env, self.state_dir)
        except Exception as exc:  # the demo goes on with the meters; say why
            _say(f"  cuff       emulated blood pressure cuff not started: {exc}")
            return
        self._stops.append(cuff.stop)
        _say(f"  cuff       emulated Blood Pressure Service cuff {cuff.describe()} (users 1 and 2, bonding required)")

    def _start_camera(self) -> None:
        from gateway.emulate.camera import write_demo_video

        video = write_demo_video(self.state_dir / "camera")
        self._set("retina.camera.device", str(video))
        _say(f"  camera     emulated fundus camera playing {video.name}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _ensure_users(config: GatewayConfig) -> list[tuple[str, str, str]]:
    """Create the demo logins once; passwords are random and kept (0600) in the demo state dir."""
    from werkzeug.security import generate_password_hash

    from gateway.runtime import open_runtime
    from gateway.store import users

    secret_file = config.gateway.state_dir / "demo-logins.txt"
    logins: list[tuple[str, str, str]] = []
    if secret_file.exists():
        for line in secret_file.read_text().splitlines():
            name, role, password = line.split(" ", 2)
            logins.append((name, role, password))
        return logins
    runtime = open_runtime(config)
    try:
        for name, role in DEMO_USERS:
            password = secrets.token_urlsafe(6)
            if users.get_user(runtime.store, name) is None:
                users.add_user(runtime.store, name, generate_password_hash(password), role)
            logins.append((name, role, password))
    finally:
        runtime.store.close()
    secret_file.touch(mode=0o600)
    secret_file.write_text("".join(f"{n} {r} {p}\n" for n, r, p in logins))
    return logins


def referral_example(config: GatewayConfig) -> list[str]:
    """How to send a grader's decision down to this demo gateway (printed with the logins)."""
    fwd, gw = config.forward, config.gateway
    return [
        "  referral   send a grader's decision down, as the hospital would (then see it under Referral decisions):",
        f"             gateway receiver refer --host {fwd.host} --port {fwd.port} --site-id {gw.site_id} "
        f"--gateway-id {gw.gateway_id} \\",
        "               --patient-id <a patient id used at a desk> --decision refer_routine --grader 'Dr Demo' "
        "--note 'Book the eye clinic'",
        "             (--capture-id <id> instead names one photo; a patient this gateway never saw is held for review)",
    ]


async def watch_parts(stack: DemoStack, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Say loudly, once, when the demo's broker or receiver dies (and when the broker comes back)."""
    broker_up, receiver_up = True, True
    while True:
        await asyncio.sleep(interval_s)
        broker = stack.broker
        if broker is not None and broker.running != broker_up:
            broker_up = broker.running
            if not broker_up:
                code = None if broker.process is None else broker.process.returncode
                _shout(
                    f"the demo's broker (mosquitto on port {broker.port}) has STOPPED (exit code {code}). Nothing "
                    "reaches the platform now; the gateway keeps everything and the status page turns red. "
                    "Restart the demo to get it back."
                )
        if stack.receiver is not None and stack.receiver.alive != receiver_up:
            receiver_up = stack.receiver.alive
            if not receiver_up:
                _shout("the demo's platform receiver has STOPPED: nothing is stored or acknowledged at the 'hospital'.")


async def _web_started(runtime: Any, stop: asyncio.Event, host: str, port: int, state: dict[str, int]) -> None:
    """Stop the demo when its pages fail to start (a port taken after the check): never run without pages."""
    while not stop.is_set():
        web = runtime.component("web")
        if web is not None and getattr(web, "started", None) is not None and web.started.is_set():
            return
        if runtime.supervision.of("web").restarts:
            print(port_taken_message(host, port), file=sys.stderr, flush=True)
            state["exit"] = EXIT_PORT_TAKEN
            stop.set()
            return
        await asyncio.sleep(0.1)


async def _report(stack: DemoStack, interval_s: float = 10.0) -> None:
    last: Any = None
    while True:
        await asyncio.sleep(interval_s)
        if stack.receiver is not None:
            counts = stack.receiver.counts()
            if counts != last:
                _say(f"  platform has: {', '.join(f'{k} {v}' for k, v in counts.items())}")
                last = counts


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``gateway demo``."""
    from gateway.daemon import COMPONENT_FACTORIES, run_daemon
    from gateway.emulate import synthetic

    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("gateway demo: mosquitto is not installed; run scripts/setup (or scripts/demo)", file=sys.stderr)
        return 2
    state_dir = (args.state_dir or Path("state/demo")).resolve()
    web_host = str(tomllib.loads(DEMO_CONFIG.read_text(encoding="utf-8")).get("web", {}).get("host", "127.0.0.1"))
    if port_taken(web_host, args.web_port):
        print(port_taken_message(web_host, args.web_port), file=sys.stderr, flush=True)
        return EXIT_PORT_TAKEN
    setup_logging("INFO")
    _say("Clinic gateway demo: starting")
    stack = DemoStack(state_dir, args.web_port, with_ble=not args.no_ble)
    try:
        stack.start()
        base = tomllib.loads(DEMO_CONFIG.read_text(encoding="utf-8"))
        config = parse_config(_merge(base, stack.overrides), "demo")
        logins = _ensure_users(config)
        _say(f"\n  pages      http://{config.web.host}:{config.web.port}/   (status page: log in as 'it')")
        for name, role, password in logins:
            _say(f"             login {name:<6} password {password:<10} ({role})")
        _say("")
        for line in referral_example(config):
            _say(line)
        _say("\n  Ctrl-C stops the demo.\n")

        async def main() -> int:
            from gateway.runtime import open_runtime

            stop = asyncio.Event()
            runtime = open_runtime(config)
            state = {"exit": 0}
            helpers = [
                asyncio.create_task(_report(stack)),
                asyncio.create_task(watch_parts(stack)),
                asyncio.create_task(_web_started(runtime, stop, config.web.host, config.web.port, state)),
            ]
            if args.duration is not None:
                asyncio.get_running_loop().call_later(args.duration, stop.set)
            try:
                factories = (*COMPONENT_FACTORIES, synthetic.components)
                code = await run_daemon(config, runtime=runtime, stop=stop, factories=factories)
                return state["exit"] or code
            finally:
                for helper in helpers:
                    helper.cancel()

        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        _say("Clinic gateway demo: stopped")
