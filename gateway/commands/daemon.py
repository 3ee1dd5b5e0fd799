"""``gateway run`` (the daemon, as systemd runs it) and ``gateway demo`` (the whole gateway on one laptop)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from gateway.commands.common import add_config_argument, config_from


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import COMPONENT_FACTORIES, run_daemon
    from gateway.emulate import synthetic

    config = config_from(args)
    # The demo's synthetic meter runs only when the config's [demo] section asks for it (demo, crash tests).
    return asyncio.run(run_daemon(config, factories=(*COMPONENT_FACTORIES, synthetic.components)))


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args)


def register(subparsers: Any) -> None:
    """Add ``run`` and ``demo`` to the ``gateway`` command."""
    run = subparsers.add_parser("run", help="run the gateway daemon (systemd runs this)")
    add_config_argument(run)
    run.set_defaults(func=_cmd_run)

    demo = subparsers.add_parser(
        "demo", help="run a self-contained demo: broker, receiver, emulated meters and camera, pages"
    )
    demo.add_argument(
        "--state-dir", type=Path, default=None, help="where the demo keeps its data (default: ./state/demo)"
    )
    demo.add_argument("--web-port", type=int, default=8080, help="port of the pages (default 8080)")
    demo.add_argument("--no-ble", action="store_true", help="skip the emulated Bluetooth meter")
    demo.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    demo.set_defaults(func=_cmd_demo)
