"""Backup and restore of the store: ``gateway export`` on a running gateway, ``gateway import`` on a new Pi.

A backup is a directory (or a ``.tar`` / ``.tar.gz`` of the same) holding::

    manifest.json      format, gateway identity, counts, and the SHA-256 and size of every file below
    gateway.db         a consistent snapshot of the database (SQLite online backup API, one read transaction)
    images/...         the image files the snapshot refers to, at their paths relative to the image directory

The snapshot is taken while the daemon keeps writing (WAL lets a reader see one consistent state); images are
content-addressed and never rewritten, so copying them after the snapshot is consistent too. Only images the
snapshot refers to are copied, each checked against its SHA-256.

Import refuses a store that holds data unless forced, and even then moves the old files aside instead of
deleting them. The outbox comes back whole: messages that were ``sent`` but not yet confirmed become
``pending`` again (the platform deduplicates on message_id), so nothing unsent is lost.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from gateway import __version__
from gateway.errors import StoreError
from gateway.store.db import iso, translate_sqlite_errors
from gateway.store.instance import exclusive_store

_logger = logging.getLogger(__name__)

FORMAT = "clinic-gateway-backup/1"
MANIFEST = "manifest.json"
DB_NAME = "gateway.db"
IMAGES = "images"
_CHUNK = 1024 * 1024
_DATA_TABLES = (
    "readings", "qc_results", "blood_pressure", "captures", "outbox", "sessions", "audit", "referrals", "users",
    "meter_patients",
)  # fmt: skip


class BackupError(StoreError):
    """A backup cannot be written or read back (corrupt, incomplete, or the target store is not empty)."""


@dataclass(slots=True)
class BackupSummary:
    """What an export or import did (counts only)."""

    path: Path
    counts: dict[str, Any]
    images: int
    image_bytes: int
    missing_images: list[str] = field(default_factory=list)
    set_aside: list[Path] = field(default_factory=list)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _counts(conn: sqlite3.Connection) -> dict[str, Any]:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    counts: dict[str, Any] = {
        t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _DATA_TABLES if t in tables
    }
    if "outbox" in tables:
        counts["outbox_by_state"] = dict(conn.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    return counts


def _safe_relative(name: str) -> PurePosixPath:
    """A member name that stays inside the backup (no absolute paths, no '..')."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise BackupError(f"backup member {name!r} points outside the backup")
    return rel


def _referenced_images(snapshot: Path, image_dir: Path) -> list[tuple[str, Path, PurePosixPath]]:
    """``(sha256, file, path inside the backup)`` for every image the snapshot's captures refer to."""
    conn = sqlite3.connect(f"file:{snapshot}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT DISTINCT sha256, image_path FROM captures").fetchall()
    finally:
        conn.close()
    root = image_dir.resolve()
    found: list[tuple[str, Path, PurePosixPath]] = []
    for sha, stored in rows:
        path = Path(stored) if Path(stored).is_absolute() else image_dir / stored
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            _logger.warning("export: image of capture hash %s lies outside the image directory; skipped", sha[:12])
            continue
        found.append((sha, resolved, PurePosixPath(IMAGES, *resolved.relative_to(root).parts)))
    return found


def export_backup(
    db_path: Path, image_dir: Path, dest: Path, *, identity: dict[str, str] | None = None
) -> BackupSummary:
    """Write a consistent backup of the store to ``dest`` (a new directory, or a ``.tar``/``.tar.gz`` file)."""
    if dest.exists():
        raise BackupError(f"{dest} already exists; choose a new name")
    if not db_path.is_file():
        raise BackupError(f"no store at {db_path}")
    as_tar = dest.name.endswith((".tar", ".tar.gz", ".tgz"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the destination (same file system), then rename: a half-written backup never has the name.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        snapshot = staging / DB_NAME
        with translate_sqlite_errors("backing up the database"):
            src = sqlite3.connect(db_path)
            dst = sqlite3.connect(snapshot)
            try:
                src.execute("PRAGMA busy_timeout = 5000")
                src.execute("PRAGMA query_only = 1")  # this connection only reads
                src.backup(dst, pages=-1)  # one step: one read transaction, one consistent state
                counts = _counts(dst)
            finally:
                dst.close()
                src.close()
        files: dict[str, dict[str, Any]] = {
            DB_NAME: {"sha256": _sha256_file(snapshot), "size": snapshot.stat().st_size}
        }
        missing: list[str] = []
        image_bytes = 0
        images = _referenced_images(snapshot, image_dir)
        for sha, source, rel in images:
            target = staging.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(source, target)
            except FileNotFoundError:
                missing.append(sha)
                continue
            digest = _sha256_file(target)
            if digest != sha:
                target.unlink()
                missing.append(sha)
                _logger.error("export: image %s does not match its hash; not exported", sha[:12])
                continue
            size = target.stat().st_size
            files[str(rel)] = {"sha256": digest, "size": size}
            image_bytes += size
        manifest = {
            "format": FORMAT,
            "created_at": iso(datetime.now(UTC)),
            "gateway_version": __version__,
            "gateway": dict(identity or {}),
            "counts": counts,
            "files": files,
            "missing_images": missing,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        if as_tar:
            partial = dest.with_name(dest.name + ".partial")
            with tarfile.open(partial, "w:gz" if dest.name.endswith(("gz", "tgz")) else "w") as tar:
                tar.add(staging / MANIFEST, arcname=MANIFEST)
                for name in files:
                    tar.add(staging / name, arcname=name)
            with partial.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(partial, dest)
        else:
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    with path.open("rb") as fh:
                        os.fsync(fh.fileno())
            os.replace(staging, dest)
        _fsync_dir(dest.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    summary = BackupSummary(dest, counts, len(files) - 1, image_bytes, missing)
    _logger.info(
        "export: %d readings, %d captures, %d outbox messages, %d images (%d bytes) to %s; %d images missing",
        counts.get("readings", 0), counts.get("captures", 0), counts.get("outbox", 0), summary.images,
        image_bytes, dest, len(missing),
    )  # fmt: skip
    return summary


@contextmanager
def _open_backup(source: Path) -> Iterator[tuple[dict[str, Any], Path]]:
    """The manifest and a directory holding the backup's files, each verified against its checksum."""
    if source.is_dir():
        root = source
        manifest = _read_manifest((root / MANIFEST).read_bytes() if (root / MANIFEST).is_file() else None, source)
        for name, meta in manifest["files"].items():
            path = root.joinpath(*_safe_relative(name).parts)
            if not path.is_file() or _sha256_file(path) != meta["sha256"]:
                raise BackupError(f"backup {source}: {name} is missing or does not match its checksum")
        yield manifest, root
        return
    if not tarfile.is_tarfile(source):
        raise BackupError(f"{source} is neither a backup directory nor a tar file")
    with tempfile.TemporaryDirectory(prefix=".cg-import-") as tmp, tarfile.open(source) as tar:
        member = tar.extractfile(MANIFEST) if MANIFEST in tar.getnames() else None
        manifest = _read_manifest(None if member is None else member.read(), source)
        root = Path(tmp)
        for name, meta in manifest["files"].items():
            rel = _safe_relative(name)
            info = tar.getmember(name) if name in tar.getnames() else None
            if info is None or not info.isfile():
                raise BackupError(f"backup {source}: {name} is missing")
            target = root.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Copy member by member (no extractall): only the files the manifest names, as plain files.
            fh = tar.extractfile(info)
            assert fh is not None
            with fh, target.open("wb") as out:
                shutil.copyfileobj(fh, out, _CHUNK)
            if _sha256_file(target) != meta["sha256"]:
                raise BackupError(f"backup {source}: {name} does not match its checksum")
        yield manifest, root


def _read_manifest(raw: bytes | None, source: Path) -> dict[str, Any]:
    if raw is None:
        raise BackupError(f"{source} has no {MANIFEST}: not a gateway backup")
    try:
        manifest = json.load(io.BytesIO(raw))
    except ValueError as exc:
        raise BackupError(f"{source}: {MANIFEST} is not valid JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or DB_NAME not in manifest.get("files", {}):
        raise BackupError(
            f"{source}: unknown backup format {manifest.get('format') if isinstance(manifest, dict) else None!r}"
        )
    return manifest


def store_holds_data(db_path: Path, image_dir: Path) -> bool:
    """True when the target holds clinical data, desk actions or queued clinical messages (or any image).

    A store with only operational events (a fresh Pi whose daemon ran once) counts as empty; it is still set
    aside, never deleted, when a backup is imported over it.
    """
    if image_dir.is_dir() and any(p.is_file() for p in image_dir.rglob("*")):
        return True
    if not db_path.exists() or db_path.stat().st_size == 0:
        return False
    with translate_sqlite_errors("reading the target store"):
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            counts = _counts(conn)
            queued = conn.execute("SELECT count(*) FROM outbox WHERE kind != 'event'").fetchone()[0]
        except sqlite3.DatabaseError:
            return True  # unreadable: treat as data, never overwrite silently
        finally:
            conn.close()
    return bool(queued) or any(
        counts.get(t, 0)
        for t in ("readings", "qc_results", "blood_pressure", "captures", "audit", "referrals", "meter_patients")
    )


def _set_aside(db_path: Path, image_dir: Path, stamp: str) -> list[Path]:
    moved: list[Path] = []
    for path in (
        db_path,
        db_path.with_name(db_path.name + "-wal"),
        db_path.with_name(db_path.name + "-shm"),
        image_dir,
    ):
        if path.exists():
            target = path.with_name(f"{path.name}.replaced-{stamp}")
            os.replace(path, target)
            moved.append(target)
    return moved


def _chown_like(path: Path, reference: Path) -> None:
    """Running as root: give restored files to the gateway's user (the owner of the state directory)."""
    if os.geteuid() != 0 or not reference.exists():
        return
    st = reference.stat()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chown(p, st.st_uid, st.st_gid)


def import_backup(source: Path, db_path: Path, image_dir: Path, *, force: bool = False) -> BackupSummary:
    """Restore a backup into the store at ``db_path``/``image_dir``.

    Refuses (:class:`~gateway.store.instance.StoreInUse`) while the daemon runs on that store: swapping the
    database under its open connection would lose what it writes meanwhile.
    """
    with exclusive_store(db_path, "gateway import"):
        return _import_backup(source, db_path, image_dir, force=force)


def _import_backup(source: Path, db_path: Path, image_dir: Path, *, force: bool) -> BackupSummary:
    if store_holds_data(db_path, image_dir) and not force:
        raise BackupError(
            f"the store at {db_path} already holds data; use --force to set it aside (it is kept, renamed)"
        )
    with _open_backup(source) as (manifest, root):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        set_aside = _set_aside(db_path, image_dir, stamp) if db_path.exists() or image_dir.exists() else []
        db_path.parent.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        partial = db_path.with_name(db_path.name + ".importing")
        shutil.copyfile(root / DB_NAME, partial)
        with partial.open("rb") as fh:
            os.fsync(fh.fileno())
        image_bytes = images = 0
        for name, meta in manifest["files"].items():
            rel = _safe_relative(name)
            if rel.parts[0] != IMAGES:
                continue
            target = image_dir.joinpath(*rel.parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root.joinpath(*rel.parts), target)
            images += 1
            image_bytes += int(meta["size"])
        os.replace(partial, db_path)
        _fsync_dir(db_path.parent)
    with translate_sqlite_errors("preparing the restored store"):
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            # What was in flight when the backup was taken is pending in it (in flight is the forwarder's memory;
            # an older backup's 'sent' rows become pending when the store is opened: migration 0011), so it is
            # sent again; the platform deduplicates on message_id.
            counts = _counts(conn)
        finally:
            conn.close()
    _chown_like(db_path, db_path.parent)
    _chown_like(image_dir, db_path.parent)
    _logger.info(
        "import: %d readings, %d captures, %d outbox messages, %d images from %s",
        counts.get("readings", 0), counts.get("captures", 0), counts.get("outbox", 0), images, source,
    )  # fmt: skip
    return BackupSummary(
        db_path, counts, images, image_bytes, list(manifest.get("missing_images", [])), set_aside=set_aside
    )
