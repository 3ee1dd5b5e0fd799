"""A daemon component for supervisor tests: its first run crashes with a bug, later runs keep running.

Loaded by the real daemon through its factory list (``factories=(components,)``).
"""

from __future__ import annotations

import asyncio

from gateway.runtime import Component, Runtime

SECRET = "P-SECRET-IN-A-TRACEBACK"


class Flaky:
    """Crashes (RuntimeError quoting a patient id) on the first run; then runs until cancelled."""

    name = "flaky"

    def __init__(self) -> None:
        self.runs = 0
        self.running = False

    async def run(self) -> None:
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError(f"a bug whose text quotes {SECRET}")
        self.running = True
        await asyncio.Event().wait()

    def healthy(self) -> bool:
        return True


def components(runtime: Runtime) -> list[Component]:
    """One flaky component."""
    return [Flaky()]
