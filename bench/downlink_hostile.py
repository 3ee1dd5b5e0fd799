"""Benchmark: valid referrals under a hostile downlink mix; how many are stored, and what it costs the forwarder.

The platform side publishes, in one burst, the messages of issue 15 (nine ``refer_urgent`` referrals with a
leap-second and a lower-case RFC 3339 referral, which are valid; year 0, a lone surrogate, a 5,000-digit ack
number, 100,000 nested ``[``, ids with ``/``, ``..`` or a newline, which are not), then ``--generated`` more
messages from a fixed seed: valid referrals interleaved with hostile ones (random bytes, deep nesting, long
numbers, NaN, impossible dates, control characters, oversized documents). The gateway is the real daemon
running the real forwarder under its supervisor (bench/downlink_rig.py).

Figures (one JSON line on stdout): ``valid_sent``, ``valid_stored`` (each valid referral id once),
``lost``, ``hostile_sent``, ``dead_letters`` (null on code without them), ``forwarder_failures`` (supervisor
restarts), ``settle_s`` (until every valid referral is stored, or nothing changed for ``--settle-s``).

    .venv/bin/python bench/downlink_hostile.py [--generated 60] [--seed 15]
    PYTHONPATH=/tmp/main-src .venv/bin/python bench/downlink_hostile.py     # the code before issue 15
"""

from __future__ import annotations

import argparse
import json
import random
import time

from downlink_rig import Rig, code_under_test

ACK, REFERRAL = "ack", "cmd/referral"


def referral(referral_id: str, **fields: object) -> bytes:
    doc: dict[str, object] = {"schema": "cg.referral/1", "referral_id": referral_id, "decision": "refer_urgent",
                              "patient_id": "P-0042", **fields}  # fmt: skip
    return json.dumps(doc).encode()


def issue_mix() -> tuple[list[tuple[str, bytes]], set[str]]:
    """The issue's batch: the valid ones interleaved with the poison."""
    valid = [(REFERRAL, referral(f"urgent-{i}")) for i in range(9)]
    valid += [(REFERRAL, referral("leap-second", decided_at="2026-12-31T23:59:60Z")),
              (REFERRAL, referral("lower-case", decided_at="2026-11-23t09:00:00z"))]  # fmt: skip
    poison = [
        (REFERRAL, referral("year-zero", decided_at="0000-11-23T09:00:00Z")),
        (REFERRAL, referral("surrogate", note="\ud800")),
        (ACK, b'{"schema": "cg.ack/1", "message_ids": [' + b"1" * 5000 + b"]}"),
        (ACK, b"[" * 100_000),
        (REFERRAL, referral("a/b")),
        (REFERRAL, referral("..")),
        (REFERRAL, referral("x\nERROR gateway.daemon: FORGED LINE")),
    ]
    mixed = [m for i in range(max(len(valid), len(poison))) for m in (valid[i : i + 1] + poison[i : i + 1])]
    return mixed, {f"urgent-{i}" for i in range(9)} | {"leap-second", "lower-case"}


def hostile(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.randrange(8)
    topic = rng.choice([ACK, REFERRAL])
    if kind == 0:
        return topic, rng.randbytes(rng.randrange(1, 300))
    if kind == 1:
        return topic, b"[" * rng.randrange(9, 100_000)
    if kind == 2:
        return ACK, b'{"schema": "cg.ack/1", "message_ids": [' + b"9" * rng.randrange(33, 6000) + b"]}"
    if kind == 3:
        return topic, b'{"schema": "cg.referral/1", "n": NaN}'
    if kind == 4:
        day = rng.choice(["0000-01-01T00:00:00Z", "2026-02-30T09:00:00Z", "2026-11-23T12:00:60Z", "2026-11-23"])
        return REFERRAL, referral(f"bad-date-{rng.randrange(10**9)}", decided_at=day)
    if kind == 5:
        bad = rng.choice(["\x00", "\x1b[31m", "\u202e", "\ud800", "\n"])
        return REFERRAL, referral(f"bad-text-{rng.randrange(10**9)}", grader=f"dr{bad}li")
    if kind == 6:
        return REFERRAL, referral(f"big-{rng.randrange(10**9)}", note="n" * rng.randrange(40_000, 90_000))
    return REFERRAL, referral(rng.choice(["a/b", "..", "x\ny", "r" * 65]) + str(rng.randrange(10)))


def generated(n: int, seed: int) -> tuple[list[tuple[str, bytes]], set[str]]:
    """``n`` messages, a third of them valid referrals, in a seeded random order."""
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    valid: set[str] = set()
    for i in range(n):
        if i % 3 == 0:
            rid = f"gen-{i}"
            valid.add(rid)
            messages.append((REFERRAL, referral(rid, decided_at="2026-11-23T09:00:00+08:00")))
        else:
            messages.append(hostile(rng))
    return messages, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generated", type=int, default=60, help="generated messages after the issue's batch")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--settle-s", type=float, default=15.0, help="stop when nothing changed for this long")
    args = parser.parse_args()

    first, valid_first = issue_mix()
    more, valid_more = generated(args.generated, args.seed)
    messages, valid = first + more, valid_first | valid_more
    with Rig() as rig:
        start = time.monotonic()
        for topic, payload in messages:
            rig.publish(topic, payload)

        def stored() -> int:
            marks = ", ".join("?" * len(valid))
            return int(rig.scalar(f"SELECT count(*) FROM referrals WHERE referral_id IN ({marks})", sorted(valid)))

        def dead_letters() -> int | None:
            try:
                return int(rig.scalar("SELECT count(*) FROM downlink_dead_letters"))
            except Exception:  # the code before issue 15 has no dead letters
                return None

        # Settled: every valid referral stored and nothing moved for a second, or nothing moved for --settle-s.
        last: tuple[int, int | None] = (-1, None)
        changed = time.monotonic()
        while True:
            now, progress = time.monotonic(), (stored(), dead_letters())
            if progress != last:
                last, changed = progress, now
            quiet = now - changed
            if quiet >= args.settle_s or (progress[0] == len(valid) and quiet >= 1.0):
                break
            time.sleep(0.05)
        settle = changed - start
        dead = dead_letters()
        result = {
            "code": code_under_test(),
            "valid_sent": len(valid),
            "valid_stored": stored(),
            "lost": len(valid) - stored(),
            "hostile_sent": len(messages) - len(valid),
            "hostile_distinct": len(set(messages)) - len(valid),  # a repeated (topic, payload) is one dead letter
            "dead_letters": dead,
            "forwarder_failures": rig.failures.count,
            "settle_s": round(settle, 2),  # burst published -> the last change seen
            "issue_batch": {"valid_sent": len(valid_first), "valid_stored": int(rig.scalar(
                f"SELECT count(*) FROM referrals WHERE referral_id IN ({', '.join('?' * len(valid_first))})",
                sorted(valid_first)))},
        }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
