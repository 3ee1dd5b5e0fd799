"""Benchmark: how soon the platform's first ack comes after the broker returns from an outage.

Default gateway config (``backoff_initial_s = 1``, ``backoff_max_s = 60``, and on current code
``reconnect_probe_s = 1``). Each round: the link is up and idle; the broker stops for ``--outage-s``; a
reading is taken during the outage; the broker starts again. ``resume_s`` is the time from the broker
accepting connections again to that reading being confirmed (``acked``) in the gateway's store: the
gateway's reconnect, the publish, the reference receiver's own reconnect, store and ack.

One JSON line on stdout with every round and the median (issue 15 asks for <= 5 s).

    .venv/bin/python bench/resume_after_outage.py [--rounds 5] [--outage-s 20]
    PYTHONPATH=/tmp/main-src .venv/bin/python bench/resume_after_outage.py     # the code before issue 15
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from datetime import UTC, datetime

from downlink_rig import Rig, code_under_test

from gateway.records import GlucoseReading, Unit
from gateway.store.readings import add_readings


def take_reading(rig: Rig, sequence: int) -> str:
    """Store one reading (as a meter download would); its outbox message id."""
    now = datetime.now(UTC)
    reading = GlucoseReading(meter_id="bench:resume", sequence=sequence, meter_time=now.replace(tzinfo=None),
                             clock_offset_s=0.0, corrected_time=now, time_trusted=True, value=6.1,
                             unit=Unit.MMOL_L, patient_id="P-BENCH")  # fmt: skip
    add_readings(rig.store, [reading])
    return str(rig.scalar("SELECT message_id FROM outbox ORDER BY seq DESC LIMIT 1"))


def acked(rig: Rig, message_id: str) -> bool:
    return bool(rig.scalar("SELECT state FROM outbox WHERE message_id = ?", [message_id]) == "acked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--outage-s", type=float, default=20.0, help="how long the broker stays down each round")
    args = parser.parse_args()

    rounds: list[float] = []
    with Rig() as rig:
        first = take_reading(rig, 1)
        rig.wait(lambda: acked(rig, first), 30, "the link working before the outage")
        for n in range(args.rounds):
            rig.broker.stop()
            time.sleep(args.outage_s)  # the outage itself: the forwarder backs off meanwhile
            message_id = take_reading(rig, n + 2)
            rig.broker.start()  # returns once the port accepts connections
            resume = rig.wait(functools.partial(acked, rig, message_id), 300, "the first ack after the outage")
            rounds.append(round(resume, 2))
            print(f"round {n + 1}: resume {resume:.2f} s", file=sys.stderr)
    print(json.dumps({
        "code": code_under_test(),
        "outage_s": args.outage_s,
        "rounds": rounds,
        "resume_s_median": statistics.median(rounds),
        "resume_s_max": max(rounds),
        "target_s": 5.0,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
