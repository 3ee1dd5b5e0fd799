"""The ``gateway`` command: every area's subcommands are present and documented."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from gateway.cli import REGISTRARS, build_parser

EXPECTED = {
    "run",
    "demo",
    "config",
    "outbox",
    "receiver",
    "meters",
    "triage",
    "model",
    "user",
    "export",
    "import",
    "prune",
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    found = []
    for name, child in subcommands(parser).items():
        found.append(((*path, name), child))
        found.extend(walk(child, (*path, name)))
    return found


def test_every_area_registers_its_commands() -> None:
    assert len(REGISTRARS) == 9
    assert set(subcommands(build_parser())) >= EXPECTED


def test_every_command_has_help_text() -> None:
    parser = build_parser()
    top = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    helped = {a.dest for a in top._choices_actions if a.help}
    assert set(subcommands(parser)) <= helped
    for path, child in walk(parser):
        assert child.format_help(), path


@pytest.mark.parametrize(
    "argv", [["--help"], ["meters", "--help"], ["outbox", "--help"], ["config", "check", "--help"]]
)
def test_help_runs_as_a_process(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: gateway" in done.stdout


def test_a_gateway_error_is_one_line_and_exit_2(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "outbox", "stats", "-c", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "missing.toml" in done.stderr
