"""``gateway outbox stats|retry`` and ``gateway receiver refer`` through the real command line parser."""

from __future__ import annotations

import json
from pathlib import Path

from support.broker import ForwarderRunner, gateway_config, wait_until
from support.factories import reading

from gateway.cli import main
from gateway.runtime import open_runtime
from gateway.store import referrals
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings
from gateway.store.sessions import start_session


def _config_file(tmp_path: Path, port: int = 1883) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\nsite_id = "chc-test"\ngateway_id = "gw-test"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[forward]\nhost = "127.0.0.1"\nport = {port}\n[clock]\nsync_check = "assume_synced"\n'
        "[web]\nenabled = false\n"
    )
    return path


def test_outbox_stats_and_retry(tmp_path: Path, capsys) -> None:
    cfg = _config_file(tmp_path)
    runtime = open_runtime(gateway_config(tmp_path / "state", port=1883))
    add_readings(runtime.store, [reading(i) for i in range(1, 4)])
    outbox = Outbox(runtime.store)
    first = runtime.store.scalar("SELECT message_id FROM outbox ORDER BY seq")
    outbox.park(first, "broker refused the message: Packet too large (0x95)")
    runtime.store.close()

    assert main(["outbox", "stats", "-c", str(cfg), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["unsent"] == 2 and stats["parked"] == 1
    assert stats["by_kind"]["glucose"] == {"parked": 1, "pending": 2}
    assert stats["parked_messages"][0]["parked_reason"].endswith("(0x95)")

    assert main(["outbox", "stats", "-c", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "unsent 2, parked 1" in text and "Packet too large" in text

    assert main(["outbox", "retry", "-c", str(cfg), "--kind", "event"]) == 0
    assert "0 parked event message(s)" in capsys.readouterr().out
    assert main(["outbox", "retry", "-c", str(cfg)]) == 0
    assert "1 parked message(s) put back" in capsys.readouterr().out
    assert main(["outbox", "stats", "-c", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unsent"] == 3


def test_outbox_stats_prints_the_facades_summary(tmp_path: Path, capsys) -> None:
    """Issue 17: the CLI no longer recomputes the outbox stats; it prints what ``services.outbox`` says (the
    maintained counts, the last ack), the same the status page shows."""
    import dataclasses

    from gateway.services import GatewayServices

    cfg = _config_file(tmp_path)
    runtime = open_runtime(gateway_config(tmp_path / "state", port=1883))
    add_readings(runtime.store, [reading(i) for i in range(1, 6)])
    outbox = Outbox(runtime.store)
    sent = outbox.claim_batch(3)
    outbox.ack([m.message_id for m in sent[:2]])
    outbox.park(sent[2].message_id, "broker refused the message")
    services = GatewayServices(runtime)
    summary = dataclasses.asdict(services.outbox.summary(parked_limit=20))
    assert (summary["unsent"], summary["parked"], summary["acked_kept"]) == (2, 1, 2)
    assert summary["last_ack_at"] is not None
    assert services.status()["outbox"]["by_kind"] == summary["by_kind"]
    services.close()

    assert main(["outbox", "stats", "-c", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary


def test_receiver_refer_reaches_the_gateway(tmp_path: Path, broker, capsys) -> None:
    cfg = _config_file(tmp_path, broker.port)
    runtime = open_runtime(gateway_config(tmp_path / "state", port=broker.port))
    # A patient this clinic has seen (issue 14: a decision for anyone else is held, listed under nobody).
    start_session(runtime.store, "retina", patient_id="P-7", operator="tom")
    with ForwarderRunner(runtime.config, runtime.store) as run:
        wait_until(lambda: run.forwarder.state == "online")
        code = main(["receiver", "refer", "-c", str(cfg), "--patient-id", "P-7", "--decision", "rescreen_6m",
                     "--referral-id", "ref-cli-1"])  # fmt: skip
        assert code == 0, capsys.readouterr()
        wait_until(lambda: referrals.list_referrals(runtime.store), what="referral stored")
    (row,) = referrals.list_referrals(runtime.store)
    assert (row.referral_id, row.patient_id, row.decision) == ("ref-cli-1", "P-7", "rescreen_6m")
    assert main(["receiver", "refer", "-c", str(cfg), "--decision", "no_dr"]) == 2  # no capture or patient


def test_outbox_dead_letters_lists_reasons_and_shows_one_escaped(tmp_path: Path, broker, receiver_factory,
                                                                  capsys) -> None:  # fmt: skip
    """Issue 15: a downlink message that fails the contract is visible to IT next to ``gateway outbox``."""
    from gateway.wire import contract

    cfg = _config_file(tmp_path, broker.port)
    runtime = open_runtime(gateway_config(tmp_path / "state", port=broker.port))
    receiver = receiver_factory(broker)
    hostile = b'{"schema": "cg.referral/1", "referral_id": "x\\nFORGED", "decision": "no_dr", "patient_id": "P-7"}'
    with ForwarderRunner(runtime.config, runtime.store) as run:
        wait_until(lambda: run.forwarder.state == "online")
        receiver.publish_raw(f"cg/v1/chc-test/gw-test/{contract.TOPIC_REFERRAL}", hostile)
        wait_until(lambda: run.forwarder.counters["dead_letters"] == 1, what="dead-lettered")
    runtime.store.close()

    assert main(["outbox", "dead-letters", "-c", str(cfg), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["dead_letters"] == 1
    (dead,) = listed["recent"]
    assert (dead["topic"], dead["what"], dead["field"]) == ("cmd/referral", "referral", "referral_id")
    assert main(["outbox", "dead-letters", "-c", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "dead letters 1" in text and "referral_id" in text and "P-7" not in text  # no payload in the list
    assert main(["outbox", "dead-letters", "-c", str(cfg), "--show", str(dead["id"])]) == 0
    shown = capsys.readouterr().out
    assert "P-7" in shown and "x\\\\nFORGED" in shown and "\nFORGED" not in shown  # escaped, one line
    assert main(["outbox", "dead-letters", "-c", str(cfg), "--show", "999"]) == 1
