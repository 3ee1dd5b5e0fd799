"""Where retinal photos come from (ADAPTER): a USB camera, a fundus camera's export folder, a page upload.

The only module that uses ``cv2.VideoCapture`` or watches the file system. It moves bytes and frames and
translates OpenCV and OS failures into :mod:`gateway.errors`; judging the image is someone else's job.

- :class:`Camera`: OpenCV ``VideoCapture`` on a V4L2 index (MJPG, requested resolution verified) or on a
  path (video file, image sequence: the emulator). ``capture()`` returns one fresh frame; ``mjpeg()``
  yields a ``multipart/x-mixed-replace`` MJPEG stream for the pages. A camera that stops delivering frames
  (unplugged) raises :class:`~gateway.errors.DeviceDisconnected` from ``capture()``; the preview stream
  ends with a last frame saying so instead of raising into the web server.
- :class:`ExportFolder`: polls a folder (optionally its sub-folders) for JPEG/PNG/TIFF files, ignoring
  hidden, temporary and partial files, and returns a file only once its size and modification time have
  not changed for ``settle_s``. Once-only across restarts is the store's folder ledger (name + SHA-256).
- :func:`read_upload`: bytes from an upload stream, refusing more than the configured maximum.
- :func:`eye_field_from_name`: laterality and field from an export file name (``OD``/``OS``/``L``/``R``...).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import numpy.typing as npt

from gateway.errors import CaptureError, DeviceDisconnected, DeviceError, DeviceNotFound
from gateway.records import Eye, Field
from gateway.retina.imaging import MIB

_logger = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]
BOUNDARY = "frame"
MJPEG_CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
"""Content type of :meth:`Camera.mjpeg` for the page's ``<img src>``."""


class Camera:
    """One camera through OpenCV, shared by the preview (a web thread) and captures (the core): thread-safe.

    Args:
        device: a V4L2 index (real camera) or a path OpenCV can open (video file, image sequence pattern).
        width, height: requested resolution (V4L2) and, with ``strict_resolution``, the one required.
        fourcc: pixel format requested from a V4L2 camera (MJPG keeps USB 2.0 bandwidth low).
        loop: for a video file: start again at its end (demo); otherwise the end reads as an unplug.
    """

    def __init__(
        self,
        device: int | str,
        *,
        width: int = 1920,
        height: int = 1080,
        fourcc: str = "MJPG",
        strict_resolution: bool = True,
        loop: bool = False,
        device_id: str | None = None,
    ) -> None:
        self.device = device
        self.width, self.height = width, height
        self.fourcc = fourcc
        self.strict_resolution = strict_resolution
        self.loop = loop
        self.device_id = device_id or (f"camera:v4l2:{device}" if isinstance(device, int) else "camera:file")
        self._cap: cv2.VideoCapture | None = None
        self._lock = threading.RLock()
        self.resolution: tuple[int, int] | None = None
        self.last_error: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the device, request format and resolution, read one frame and verify its size.

        Raises:
            DeviceNotFound: no such camera / file. DeviceError: it opens but gives another resolution
            (with ``strict_resolution``) or no frame.
        """
        with self._lock:
            if self._cap is not None:
                return
            cap = self._open_capture()
            try:
                frame = self._read(cap)
                if frame is None:
                    raise DeviceError("camera opened but delivered no frame", device_id=self.device_id)
                h, w = frame.shape[:2]
                self.resolution = (w, h)
                if self.strict_resolution and (w, h) != (self.width, self.height):
                    raise DeviceError(
                        f"camera delivers {w}x{h}, configured {self.width}x{self.height} "
                        "(retina.camera.width/height); pick a mode the camera supports",
                        device_id=self.device_id,
                    )
            except BaseException:
                cap.release()
                raise
            self._cap = cap
            self.last_error = None
            _logger.info("camera %s open at %dx%d", self.device_id, w, h)

    def _open_capture(self) -> cv2.VideoCapture:
        try:
            if isinstance(self.device, int):
                cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
                if cap.isOpened():
                    cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*self.fourcc))
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
                    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep only the newest frame: captures are "now"
                    got = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace")
                    if got != self.fourcc:  # still usable (the frame size check decides), but say so
                        _logger.warning("camera %s uses %r, not %r", self.device_id, got, self.fourcc)
            else:
                backend = cv2.CAP_IMAGES if "%" in self.device else cv2.CAP_FFMPEG
                cap = cv2.VideoCapture(self.device, backend)
        except cv2.error as exc:
            raise DeviceError(f"camera {self.device_id} cannot be opened: {exc.err}", device_id=self.device_id) from exc
        if not cap.isOpened():
            cap.release()
            raise DeviceNotFound(f"no camera at {self.device_id}", device_id=self.device_id)
        return cap

    def _read(self, cap: cv2.VideoCapture) -> Frame | None:
        try:
            ok, frame = cap.read()
        except cv2.error as exc:
            raise DeviceDisconnected(f"camera read failed: {exc.err}", device_id=self.device_id) from exc
        if not ok or frame is None:
            return None
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def close(self) -> None:
        """Release the device (safe to call twice)."""
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None

    @property
    def is_open(self) -> bool:
        """True while the device is open."""
        return self._cap is not None

    # -- frames -------------------------------------------------------------------------------------
    def frame(self) -> Frame:
        """The next frame (opening the device if needed).

        Raises:
            DeviceNotFound / DeviceError: cannot open. DeviceDisconnected: it stopped delivering frames
            (unplugged); the device is closed and the next call tries to open it again.
        """
        with self._lock:
            self.open()
            assert self._cap is not None
            frame = self._read(self._cap)
            if frame is None and self.loop and not isinstance(self.device, int):
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                frame = self._read(self._cap)
            if frame is None:
                self.close()
                self.last_error = "camera stopped delivering frames (unplugged?)"
                raise DeviceDisconnected(
                    "camera stopped delivering frames: check its USB cable", device_id=self.device_id
                )
            return frame

    def capture(self) -> Frame:
        """One fresh frame for a photo (a V4L2 camera's stale buffered frame is dropped first)."""
        with self._lock:
            if isinstance(self.device, int) and self._cap is not None:
                self._cap.grab()
            return self.frame()

    def preview_frames(self, fps: float = 5.0, max_side: int = 640) -> Iterator[bytes]:
        """JPEG preview frames at about ``fps``, downscaled to ``max_side``; raises DeviceError when the
        camera goes away (use :meth:`mjpeg` for the page, which does not raise)."""
        period = 1.0 / fps
        while True:
            started = time.monotonic()
            frame = self.frame()
            h, w = frame.shape[:2]
            scale = max_side / max(h, w)
            if scale < 1:
                size = (round(w * scale), round(h * scale))
                frame = np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                yield bytes(buf.tobytes())
            time.sleep(max(0.0, period - (time.monotonic() - started)))

    def mjpeg(self, fps: float = 5.0, max_side: int = 640, max_frames: int | None = None) -> Iterator[bytes]:
        """The live preview as ``multipart/x-mixed-replace`` parts (:data:`MJPEG_CONTENT_TYPE`).

        Never raises: when the camera cannot be opened or is unplugged mid-preview, the stream ends with a
        frame that says so, and ``last_error`` holds the reason for the page.
        """
        sent = 0
        try:
            for jpeg in self.preview_frames(fps, max_side):
                yield _part(jpeg)
                sent += 1
                if max_frames is not None and sent >= max_frames:
                    return
        except DeviceError as exc:
            self.last_error = str(exc)
            _logger.warning("camera %s preview ended: %s", self.device_id, type(exc).__name__)
            yield _part(_placard("Camera disconnected" if isinstance(exc, DeviceDisconnected) else "No camera"))


def _part(jpeg: bytes) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode("ascii")
    return head + jpeg + b"\r\n"


def _placard(text: str, size: tuple[int, int] = (640, 480)) -> bytes:
    image = np.full((size[1], size[0], 3), 40, np.uint8)
    cv2.putText(image, text, (40, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", image)
    return bytes(buf.tobytes()) if ok else b""


# -- export folder ------------------------------------------------------------------------------------
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".filepart", ".swp", "~")


def is_candidate(name: str) -> bool:
    """True for a file name the watcher may take: an image suffix, not hidden, not a temp/partial file."""
    lower = name.lower()
    if lower.startswith((".", "~$")) or lower.endswith(_TEMP_SUFFIXES):
        return False
    return Path(lower).suffix in IMAGE_SUFFIXES


@dataclass(frozen=True, slots=True)
class ReadyFile:
    """A settled file in the export folder; ``name`` is its path relative to the folder."""

    path: Path
    name: str
    size: int
    mtime_ns: int


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class ExportFolder:
    """Polls a camera's export folder; :meth:`poll` returns files that have stopped changing."""

    def __init__(self, path: Path, *, settle_s: float = 2.0, recursive: bool = True, max_depth: int = 3) -> None:
        self.path = path
        self.settle_s = settle_s
        self.recursive = recursive
        self.max_depth = max_depth
        self._seen: dict[str, _Seen] = {}
        self._returned: set[tuple[str, int, int]] = set()

    def _scan(self) -> Iterator[tuple[str, os.stat_result]]:
        base = len(str(self.path).rstrip(os.sep)) + 1
        stack = [(self.path, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                if folder == self.path:
                    raise DeviceNotFound(f"export folder {self.path} does not exist (is it mounted?)") from None
                continue
            except OSError as exc:
                raise DeviceError(f"export folder {self.path} cannot be read: {exc.strerror}") from exc
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self.recursive and depth < self.max_depth and not entry.name.startswith("."):
                            stack.append((Path(entry.path), depth + 1))
                        continue
                    if not entry.is_file(follow_symlinks=False) or not is_candidate(entry.name):
                        continue
                    yield entry.path[base:], entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while we looked
                    continue

    def poll(self, now: float | None = None) -> list[ReadyFile]:
        """Scan once; return files whose size and mtime have not changed for ``settle_s`` (each once).

        Raises:
            DeviceNotFound: the folder is missing (unmounted share). DeviceError: it cannot be read.
        """
        now = time.monotonic() if now is None else now
        ready: list[ReadyFile] = []
        present: set[str] = set()
        for name, st in self._scan():
            present.add(name)
            seen = self._seen.get(name)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._seen[name] = _Seen(st.st_size, st.st_mtime_ns, now)
                continue
            key = (name, st.st_size, st.st_mtime_ns)
            if st.st_size > 0 and now - seen.stable_since >= self.settle_s and key not in self._returned:
                self._returned.add(key)
                ready.append(ReadyFile(self.path / name, name, st.st_size, st.st_mtime_ns))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return sorted(ready, key=lambda f: (f.mtime_ns, f.name))

    def forget(self, ready: ReadyFile) -> None:
        """Let a returned file be returned again (its intake failed for a reason worth retrying)."""
        self._returned.discard((ready.name, ready.size, ready.mtime_ns))

    @staticmethod
    def read(ready: ReadyFile, max_bytes: int) -> bytes:
        """The file's bytes. Raises CaptureError (too big) or DeviceError (vanished / unreadable)."""
        if ready.size > max_bytes:
            raise CaptureError(f"image file is {ready.size / MIB:.1f} MB, above the {max_bytes / MIB:.1f} MB limit")
        try:
            return ready.path.read_bytes()
        except FileNotFoundError as exc:
            raise DeviceError("export file vanished before it could be read") from exc
        except OSError as exc:
            raise DeviceError(f"export file cannot be read: {exc.strerror}") from exc


# -- uploads and names --------------------------------------------------------------------------------
def read_upload(stream: BinaryIO, max_bytes: int) -> bytes:
    """Read an uploaded file, refusing more than ``max_bytes`` without reading it all into memory."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CaptureError(f"upload is larger than the {max_bytes / MIB:.1f} MB limit (retina.max_image_mb)")
    if not data:
        raise CaptureError("the uploaded file is empty")
    return data


_EYE_TOKENS = {"od": Eye.RIGHT, "r": Eye.RIGHT, "re": Eye.RIGHT, "right": Eye.RIGHT,
               "os": Eye.LEFT, "l": Eye.LEFT, "le": Eye.LEFT, "left": Eye.LEFT}  # fmt: skip
_FIELD_TOKENS = {"disc": Field.DISC, "disk": Field.DISC, "onh": Field.DISC, "macula": Field.MACULA,
                 "mac": Field.MACULA, "fovea": Field.MACULA}  # fmt: skip
_TOKEN = re.compile(r"[a-z]+")


def eye_field_from_name(name: str) -> tuple[Eye | None, Field | None]:
    """Laterality and field from an export file name's words (``..._OD_disc.jpg`` -> R, disc).

    Only whole words count (``OD``, ``OS``, ``L``, ``R``, ``left``, ``right``...), and a name that names
    both eyes gives no eye: a wrong laterality is worse than asking.
    """
    words = _TOKEN.findall(Path(name).stem.lower())
    eyes = {_EYE_TOKENS[w] for w in words if w in _EYE_TOKENS}
    fields = {_FIELD_TOKENS[w] for w in words if w in _FIELD_TOKENS}
    return (eyes.pop() if len(eyes) == 1 else None), (fields.pop() if len(fields) == 1 else None)
