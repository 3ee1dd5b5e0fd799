"""``gateway receiver``: run the reference platform receiver; ``gateway receiver refer``: send a decision down.

Broker options come from ``--config FILE`` (the gateway's config: same broker, TLS and credentials) and
are overridden by ``--host/--port/--username/--password-file/--ca-file/--cert-file/--key-file``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.commands.common import EXIT_ERROR, EXIT_OK, positive_int

DECISIONS = ("refer_urgent", "refer_routine", "rescreen_12m", "rescreen_6m", "no_dr", "ungradable_retake")


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=None, help="take broker settings from this gateway config")
    parser.add_argument("--host", default=None, help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="broker port (default 1883)")
    parser.add_argument("--username", default=None)
    parser.add_argument("--password-file", type=Path, default=None, help="secret file (0600) with the password")
    parser.add_argument("--ca-file", type=Path, default=None, help="CA certificate: connect with TLS")
    parser.add_argument("--cert-file", type=Path, default=None, help="client certificate (mutual TLS)")
    parser.add_argument("--key-file", type=Path, default=None, help="client key (secret file)")


def _settings(args: argparse.Namespace, db: Path) -> tuple[Any, str | None]:
    """ReceiverSettings from the options, and the gateway's topic prefix when a config was given."""
    from gateway.config import load_config, read_secret
    from gateway.emulate.platform import ReceiverSettings

    values: dict[str, Any] = {"host": "127.0.0.1", "port": 1883}
    prefix = None
    if args.config is not None:
        cfg = load_config(args.config)
        fwd = cfg.forward
        prefix = cfg.topic_prefix
        values.update(host=fwd.host, port=fwd.port, username=fwd.username)
        if fwd.password_file is not None:
            values["password"] = read_secret(fwd.password_file)
        if fwd.tls is not None:
            values.update(ca_file=fwd.tls.ca_file, cert_file=fwd.tls.cert_file, key_file=fwd.tls.key_file)
    for key in ("host", "port", "username", "ca_file", "cert_file", "key_file"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.password_file is not None:
        values["password"] = read_secret(args.password_file)
    if args.ack_batch_max is not None:
        values["ack_batch_max"] = args.ack_batch_max
    return ReceiverSettings(db_path=db, **values), prefix


def _cmd_receiver(args: argparse.Namespace) -> int:
    from gateway.emulate.platform import Receiver
    from gateway.logs import setup_logging

    setup_logging("INFO")
    settings, _ = _settings(args, args.db)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    receiver = Receiver(settings)
    receiver.start()
    print(f"receiver: storing to {args.db}, broker {settings.host}:{settings.port}", flush=True)
    try:
        while not stop.wait(args.report_s):
            print("receiver: " + ", ".join(f"{k} {v}" for k, v in receiver.counts().items()), flush=True)
    finally:
        receiver.stop()
    return EXIT_OK


def _cmd_refer(args: argparse.Namespace) -> int:
    import uuid

    from gateway.emulate.platform import send_referral_once
    from gateway.records import Referral

    if args.capture_id is None and args.patient_id is None:
        print("gateway receiver refer: give --capture-id or --patient-id")
        return EXIT_ERROR
    settings, prefix = _settings(args, Path("/dev/null"))
    if args.site_id and args.gateway_id:
        prefix = f"cg/v1/{args.site_id}/{args.gateway_id}/"
    if prefix is None:
        print("gateway receiver refer: give --config FILE or --site-id and --gateway-id")
        return EXIT_ERROR
    referral = Referral(
        referral_id=args.referral_id or uuid.uuid4().hex,
        decision=args.decision,
        capture_id=args.capture_id,
        patient_id=args.patient_id,
        note=args.note,
        grader=args.grader,
        decided_at=datetime.now(UTC).replace(microsecond=0),
    )
    ok = send_referral_once(settings, prefix, referral)
    print(f"referral {referral.referral_id} {'sent' if ok else 'NOT confirmed by the broker'} to {prefix}")
    return EXIT_OK if ok else EXIT_ERROR


def register(subparsers: Any) -> None:
    """Add ``receiver`` and ``receiver refer`` to the ``gateway`` command."""
    receiver = subparsers.add_parser("receiver", help="run the reference platform receiver (demo and tests)")
    _broker_options(receiver)
    receiver.add_argument("--db", type=Path, default=Path("state/platform.db"), help="the receiver's SQLite file")
    receiver.add_argument("--report-s", type=float, default=10.0, help="print counts this often (seconds)")
    receiver.add_argument(
        "--ack-batch-max",
        type=positive_int,
        default=None,
        help="most messages stored, then acknowledged in one ack, together (default: what arrived while the "
        "previous batch was stored, up to a limit; 1: an ack per message, as a platform that confirms each message "
        "as it stores it)",
    )
    receiver.set_defaults(func=_cmd_receiver)
    sub = receiver.add_subparsers(dest="receiver_command", required=False, metavar="ACTION")
    refer = sub.add_parser("refer", help="send a grader's referral decision down to a gateway")
    _broker_options(refer)
    refer.add_argument("--capture-id", default=None)
    refer.add_argument("--patient-id", default=None)
    refer.add_argument("--decision", required=True, choices=DECISIONS)
    refer.add_argument("--note", default=None)
    refer.add_argument("--grader", default=None)
    refer.add_argument("--referral-id", default=None, help="default: a new id")
    refer.add_argument("--site-id", default=None, help="with --gateway-id: the target instead of --config's")
    refer.add_argument("--gateway-id", default=None)
    refer.set_defaults(func=_cmd_refer)
