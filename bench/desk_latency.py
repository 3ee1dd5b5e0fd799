"""How fast the desks feel (issue 14, "Speed the desk feels"), measured on the real pages in headless Chromium.

- **shutter -> verdict**: the technician clicks Capture (the emulated camera) or Upload (a generated photo);
  the time until the quality verdict is on screen. Target: <= 0.5 s.
- **meter last byte -> readings**: the nurse starts a download; the time from the moment the meter hands over
  its last record until the readings table on the nurse's page shows all of them. Target: <= 2 s.

The gateway side is real, as in the browser tests: the web component (waitress), the retina service (real
quality gate; the triage model when ``--model`` finds it) and real meter downloads (``DownloadSession`` over a
scripted meter driver that notes when it yields its last record) on an asyncio core thread, a real store.
Medians over ``--repeats`` runs; the last line is JSON.

It uses only what main's pages have too (the same ids), so the figures before and after come from one script::

    .venv/bin/python bench/desk_latency.py                              # this tree
    git archive main | tar -x -C /tmp/main-src
    PYTHONPATH=/tmp/main-src .venv/bin/python bench/desk_latency.py     # main's code, same bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The test helpers (browser launch, core thread, scripted meter). Appended, not prepended: with PYTHONPATH set
# to an export of main, ``gateway`` must come from there.
sys.path.extend([str(REPO / "tests"), str(REPO / "tests" / "web")])

import browser_kit as kit  # noqa: E402
from web_harness import (  # noqa: E402
    PASSWORD,
    ScriptedMeter,
    add_users,
    make_config,
    retina_core,
    scripted_records,
    serve_meter_sync,
)

import gateway  # noqa: E402
from gateway.clock import SystemClock  # noqa: E402
from gateway.desk import SerialSyncRequest  # noqa: E402
from gateway.emulate import camera as emulated_camera  # noqa: E402
from gateway.records import MeterInfo, MeterRecord  # noqa: E402
from gateway.runtime import Runtime, open_runtime  # noqa: E402
from gateway.services import GatewayServices  # noqa: E402
from gateway.store.readings import upsert_meter  # noqa: E402
from gateway.web.component import WebServer  # noqa: E402

RECORDS = 6
LAST_RECORD: dict[str, float] = {}
"""meter id -> time.monotonic() when its driver handed over the last record (the last byte)."""


class TimedMeter(ScriptedMeter):  # type: ignore[misc]  # the tests' helpers are untyped
    """The tests' scripted meter, noting when its last record leaves the meter."""

    async def records(self, since_sequence: int | None) -> AsyncIterator[MeterRecord]:
        async for record in super().records(since_sequence):
            if record is self.records_list[-1]:
                LAST_RECORD[self.info.meter_id] = time.monotonic()
            yield record


DONE_AT: dict[str, float] = {}
"""request id -> time.monotonic() when the core posted its photo's finished state (the verdict is known)."""


@contextmanager
def _gateway(tmp: Path, *, model: bool, repeats: int) -> Iterator[tuple[Runtime, WebServer]]:
    video = emulated_camera.write_video(tmp / "camera.avi", emulated_camera.frames(8, size=(640, 480), seed=5))
    config = make_config(
        tmp / "state",
        retina={"camera": {"enabled": True, "device": str(video), "width": 640, "height": 480, "loop": True,
                           "preview_fps": 5}},
        store={"low_disk_warn_mb": 0, "min_free_mb": 0},
        web={"login_attempts_per_minute": 200, "login_attempts_per_address_per_minute": 400},
    )  # fmt: skip
    runtime = open_runtime(config, clock=SystemClock("assume_synced"))
    add_users(runtime)
    for i in range(repeats):  # one meter per run: a meter downloaded again brings nothing new
        upsert_meter(runtime.store, MeterInfo(meter_id=f"serial:BENCH{i}", family="scripted", transport="serial",
                                              serial=f"BENCH{i}", model="Test Meter 1"))  # fmt: skip
    put = runtime.progress.put

    def noting(key: str, value: Any) -> None:  # when the verdict is known, to split the pipeline from the page
        if value.state.finished:
            DONE_AT.setdefault(key, time.monotonic())
        put(key, value)

    runtime.progress.put = noting  # type: ignore[method-assign]
    web = WebServer(runtime, GatewayServices(runtime))
    runtime.components.append(web)
    runtime.desk.queue(SerialSyncRequest)
    try:
        with retina_core(runtime, load=model) as core:
            core.start(lambda: serve_meter_sync(runtime, lambda target: TimedMeter(target, _records(), 0.05)))
            core.start(web.run)
            assert web.started.wait(30), "the pages did not start"
            yield runtime, web
    finally:
        runtime.store.close()


def _records() -> list[MeterRecord]:
    records: list[MeterRecord] = scripted_records()[:RECORDS]
    return records


def _verdict_after(page: Any, click: str) -> tuple[float, float]:
    """Seconds from the click until a new verdict is on screen (in the page, visible: not the page's "load",
    which also waits for the thumbnails and the camera preview's first frame), and of those the seconds after
    the core had the verdict (what the page adds: polling, reloads, or pushing)."""
    before = page.url
    started = time.monotonic()
    page.click(click)
    page.wait_for_url(lambda url: url != before and "/result/" in url, timeout=30_000, wait_until="commit")
    page.locator("#quality-verdict").wait_for(timeout=30_000)
    shown = time.monotonic()
    request_id = page.url.split("/result/")[1].split("?")[0]
    return shown - started, shown - DONE_AT[request_id]


def _technician(browser: Any, url: str, repeats: int) -> dict[str, list[tuple[float, float]]]:
    page = kit.open_page(browser, url, width=kit.WIDTHS["desktop"], lang="en")
    kit.login(page, "tom", PASSWORD)
    page.goto("/technician")
    page.fill("#patient_id", "BENCH-RET-1")
    page.click("#set-patient")
    page.locator("#capture").wait_for()
    shutter: list[tuple[float, float]] = []
    upload: list[tuple[float, float]] = []
    for i in range(repeats + 1):  # the first of each is a warm-up (imports, caches)
        page.check("input[name=eye][value=R]" if i % 2 else "input[name=eye][value=L]")
        took = _verdict_after(page, "#capture")
        photo = emulated_camera.encode(emulated_camera.synthetic_fundus(100 + i, eye="R"))
        page.set_input_files("#photo", files=[{"name": f"p{i}.jpg", "mimeType": "image/jpeg", "buffer": photo}])
        took_upload = _verdict_after(page, "#upload")
        if i:
            shutter.append(took)
            upload.append(took_upload)
    page.context.close()
    return {"shutter": shutter, "upload": upload}


def _nurse(browser: Any, url: str, repeats: int) -> list[float]:
    page = kit.open_page(browser, url, width=kit.WIDTHS["desktop"], lang="en")
    kit.login(page, "nina", PASSWORD)
    seconds = []
    for i in range(repeats):
        meter = f"serial:BENCH{i}"
        page.goto("/nurse")
        page.fill("#patient_id", f"BENCH-GLU-{i}")
        page.click("#set-patient")
        page.click(f"button[data-meter='{meter}']")
        rows = page.locator("#readings-table tbody tr")
        kit.wait_for(lambda rows=rows: rows.count() >= RECORDS, timeout_s=60, what="the readings on the page")
        seconds.append(time.monotonic() - LAST_RECORD[meter])
    page.context.close()
    return seconds


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-model", action="store_true", help="without the triage model (quality gate only)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="desk-latency-") as tmp,
        _gateway(Path(tmp), model=not args.no_model, repeats=args.repeats) as (_, web),
        kit.launch() as browser,
    ):
        url = f"http://127.0.0.1:{web.port}"
        tech = _technician(browser, url, args.repeats)
        nurse = _nurse(browser, url, args.repeats)
    result: dict[str, Any] = {
        "bench": "desk_latency",
        "code": str(Path(gateway.__file__).resolve().parents[1]),
        "repeats": args.repeats,
        "model": not args.no_model,
    }
    for name, runs in (("shutter", tech["shutter"]), ("upload", tech["upload"])):
        result[f"{name}_to_verdict_s"] = {
            "median": _median([r[0] for r in runs]),
            "all": [round(r[0], 3) for r in runs],
        }
        # The part after the core had the verdict: what polling (before) or pushing (after) adds.
        result[f"{name}_page_after_verdict_s"] = {"median": _median([r[1] for r in runs])}
    result["meter_last_byte_to_readings_s"] = {"median": _median(nurse), "all": [round(v, 3) for v in nurse]}
    result["targets_s"] = {"verdict": 0.5, "readings": 2.0}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
