"""Outbox operations: ``gateway outbox stats``, ``gateway outbox retry [--kind K]`` and
``gateway outbox dead-letters [--show ID]``.

All work on the store named by the config and are safe while the daemon runs (SQLite WAL; the store
serialises writers). ``retry`` puts parked messages back in the queue after IT fixed the cause (for
example raised the broker's message size limit). ``dead-letters`` lists the platform's downlink messages
that failed the contract (count, newest reasons); ``--show ID`` prints one's kept bytes, escaped (they may
hold patient data: the terminal, never a log).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from gateway.commands.common import EXIT_OK, EXIT_PROBLEMS, add_config_argument, config_from, local_time
from gateway.services import GatewayServices


def _open(args: argparse.Namespace) -> GatewayServices:
    from gateway.runtime import open_runtime

    return GatewayServices(open_runtime(config_from(args)))


def _cmd_stats(args: argparse.Namespace) -> int:
    services = _open(args)
    config = services.runtime.config
    try:
        summary = services.outbox.summary(parked_limit=args.limit)
    finally:
        services.close()
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2, sort_keys=True))
        return EXIT_OK
    print(f"unsent {summary.unsent}, parked {summary.parked}, acked (kept) {summary.acked_kept}, "
          f"last ack {local_time(config, summary.last_ack_at)}")  # fmt: skip
    for kind, by_state in sorted(summary.by_kind.items()):
        print(f"  {kind:<12} " + ", ".join(f"{state} {n}" for state, n in sorted(by_state.items())))
    for row in summary.parked_messages:
        print(f"  parked {row.message_id} ({row.kind}): {row.parked_reason}")
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:
    services = _open(args)
    try:
        count = services.outbox.retry_parked(args.kind)
    finally:
        services.close()
    what = f"{args.kind} " if args.kind else ""
    print(f"{count} parked {what}message(s) put back in the queue")
    return EXIT_OK


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    services = _open(args)
    config = services.runtime.config
    try:
        summary = services.dead_letters(limit=args.limit)
        shown = None if args.show is None else services.outbox.dead_letter_payload(args.show)
    finally:
        services.close()
    if args.show is not None:
        if shown is None:
            print(f"no dead letter {args.show}")
            return EXIT_PROBLEMS
        data, size = shown
        cut = f" (first {len(data)} of {size} bytes)" if len(data) < size else f" ({size} bytes)"
        print(f"dead letter {args.show}{cut}, escaped:")
        # ASCII-only JSON string: control characters, bidi overrides and invalid UTF-8 come out as escapes
        print(json.dumps(data.decode("utf-8", "backslashreplace"), ensure_ascii=True))
        return EXIT_OK
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"dead letters {summary['dead_letters']} (kept {summary['dead_letters_kept']})")
    for d in summary["recent"]:
        when = local_time(config, d["received_at"])
        print(f"  #{d['id']} {when} {d['topic']} ({d['size_bytes']} bytes): {d['field']}: {d['reason']}")
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``outbox stats``, ``outbox retry`` and ``outbox dead-letters`` to the ``gateway`` command."""
    outbox = subparsers.add_parser("outbox", help="inspect and retry the outbox (messages to the platform)")
    sub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    stats = sub.add_parser("stats", help="counts per kind and state, the oldest unsent message, parked reasons")
    add_config_argument(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument("--limit", type=int, default=20, help="parked messages to list (default 20)")
    stats.set_defaults(func=_cmd_stats)
    retry = sub.add_parser("retry", help="put parked messages back in the queue")
    add_config_argument(retry)
    retry.add_argument("--kind", default=None, help="only this kind (glucose, capture, image_chunk, event)")
    retry.set_defaults(func=_cmd_retry)
    dead = sub.add_parser(
        "dead-letters", help="platform messages that failed the contract: count, newest reasons, one's bytes"
    )
    add_config_argument(dead)
    dead.add_argument("--json", action="store_true", help="print JSON")
    dead.add_argument("--limit", type=int, default=20, help="dead letters to list (default 20)")
    dead.add_argument("--show", type=int, default=None, metavar="ID", help="print one dead letter's bytes, escaped")
    dead.set_defaults(func=_cmd_dead_letters)
