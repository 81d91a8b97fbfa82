"""One JSON file, safely: atomic durable writes (alone or as a group commit), defensive reads.

Every write goes to a unique temp file in the destination folder (``.{name}.{hex}.tmp``,
recognisable so start-up can remove leftovers of a crash), is made durable, and only then
renamed over the final name; the folder is synced last so the rename itself survives.
A reader therefore sees, at any moment and after any crash, either the old complete
file or the new complete file under the final name, never a torn one.

Reading is the mirror image: :func:`load_json` trusts nothing and classifies what is
wrong with a file (:class:`FileProblem`). :mod:`storage.files` decides which documents
go where; the write functions here raise ``OSError``, which it wraps in ``StorageError``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from domain import FORMAT_VERSION, isoformat
from errors import StorageError, ValidationError

logger = logging.getLogger(__name__)

_TEMP_NAME = re.compile(r"^\..*\.[0-9a-f]{32}\.tmp$", re.DOTALL)
_MAX_NAME_IN_TEMP = 100
"""Keeps temp names under NAME_MAX (255 bytes) whatever the final name's length."""
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
SYNCFS_MIN_FILES = 4
"""Smaller batches fsync each file: syncfs would also flush unrelated dirty data (images)."""
_SYNCFS_MIN_KERNEL = (5, 8)
"""Before Linux 5.8 syncfs(2) returned 0 even when writeback had failed, so it proved nothing."""


ProblemKind = Literal["empty", "torn", "corrupt", "foreign", "version"]
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Larger files are reported as corrupt rather than read into memory at start-up."""


@dataclass(frozen=True)
class FileProblem:
    """A file that was skipped, and why."""

    path: Path
    kind: ProblemKind
    """empty, torn (truncated/invalid JSON), corrupt (wrong shape), foreign, version."""
    detail: str


class FileProblemError(StorageError):
    """A file cannot be trusted: empty, torn, corrupt, foreign or of a newer format."""

    def __init__(self, path: Path, kind: ProblemKind, detail: str) -> None:
        super().__init__(
            f"{path}: {kind} file: {detail}", details={"path": str(path), "kind": kind}
        )
        self.problem = FileProblem(path, kind, detail)


def load_json(path: Path) -> dict[str, Any]:
    """Read one JSON object written by us (or an older writer without a format version).

    Raises:
        FileProblemError: the file is missing or unreadable (``corrupt``), ``empty``,
            ``torn``, not an object (``corrupt``), a symlink (``foreign``) or of a newer
            format (``version``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        kind: ProblemKind = "foreign" if path.is_symlink() else "corrupt"
        raise FileProblemError(path, kind, f"cannot open: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:  # e.g. a folder under a file's name
        raise FileProblemError(path, "corrupt", f"cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise FileProblemError(path, "corrupt", f"larger than {MAX_FILE_BYTES} bytes")
    if not raw.strip():
        raise FileProblemError(path, "empty", "no content")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FileProblemError(path, "torn", f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise FileProblemError(path, "corrupt", "JSON nested too deeply") from exc
    if not isinstance(doc, dict):
        raise FileProblemError(path, "corrupt", f"not a JSON object but {type(doc).__name__}")
    version = doc.get("format_version", 1)
    if type(version) is not int or version < 1:
        raise FileProblemError(path, "corrupt", f"format_version {version!r} is not a positive int")
    if version > FORMAT_VERSION:
        raise FileProblemError(path, "version", f"format_version {version} > {FORMAT_VERSION}")
    return doc


def encode_json(data: dict[str, Any], *, indent: int | None = None) -> bytes:
    """``data`` as UTF-8 JSON stamped with ``format_version`` (datetimes as ISO text).

    Raises:
        ValidationError: ``data`` holds something JSON cannot represent.
    """
    body = {key: value for key, value in data.items() if key != "format_version"}
    doc = {"format_version": FORMAT_VERSION, **body}

    def default(value: object) -> Any:
        if isinstance(value, datetime):
            return isoformat(value)
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    try:
        try:
            text = json.dumps(doc, ensure_ascii=False, indent=indent, default=default)
            return (text + "\n").encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escape them rather than fail the write
            return (json.dumps(doc, indent=indent, default=default) + "\n").encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"document cannot be written as JSON: {exc}") from exc


def temp_path_for(path: Path) -> Path:
    """A fresh, unique temp file name in ``path``'s folder (never an existing file).

    Its 32 hex digits are the writer's host (8), process id (8) and 16 random ones, so
    an instance starting on a shared output folder removes only the leftovers of dead
    processes, never the writes in flight of a live one (see :func:`remove_temp_files`).
    """
    return path.with_name(f".{path.name[:_MAX_NAME_IN_TEMP]}.{_temp_token()}.tmp")


def _temp_token() -> str:
    return f"{_HOST_TAG}{os.getpid() & 0xFFFFFFFF:08x}{uuid.uuid4().hex[:16]}"


_HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
FOREIGN_TEMP_MAX_AGE = 3600.0
"""Seconds after which a temp file of another host (or of an older naming) is a leftover."""


def _abandoned(name: str, mtime: float, now: float) -> bool:
    """Whether a temp file can no longer be a write in flight."""
    token = name[-36:-4]
    if token[:8] != _HOST_TAG:
        return now - mtime > FOREIGN_TEMP_MAX_AGE
    pid = int(token[8:16], 16)
    if pid == os.getpid():
        return True  # called at start-up, before any writer of ours runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # Alive (or the pid was reused): only very old files are leftovers.
    return now - mtime > FOREIGN_TEMP_MAX_AGE


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our temp files (a leftover if no write is in flight)."""
    return _TEMP_NAME.match(name) is not None


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (creations, renames, removals) durable."""
    fd = open_dir(folder)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path, *, fsync: bool) -> None:
    """Create ``folder`` and its missing parents, syncing each new entry's parent."""
    missing: list[Path] = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        if fsync:
            fsync_dir(new.parent)


def _kernel_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux") or _kernel_version() < _SYNCFS_MIN_KERNEL:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_SYNCFS = _load_syncfs()


def syncfs_available() -> bool:
    """Whether group commits can use one ``syncfs(2)`` per filesystem (Linux >= 5.8)."""
    return _SYNCFS is not None


def open_dir(folder: Path) -> int:
    """A read-only descriptor of ``folder`` (for fsync or syncfs); the caller closes it."""
    return os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def syncfs(fd: int) -> None:
    """Flush every dirty page and inode of the filesystem holding ``fd``, and wait.

    The kernel reports writeback errors that happened since ``fd`` was opened, so open
    it before writing the data it must vouch for. ctypes releases the GIL for the call,
    so other threads (the event loop) keep running.

    Raises:
        OSError: the filesystem failed to write something back since ``fd`` was opened.
    """
    if _SYNCFS is None:
        raise OSError(38, "syncfs(2) is not available here")
    if _SYNCFS(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs failed: {os.strerror(err)}")


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _discard(temps: Iterable[Path]) -> None:
    for temp in temps:
        try:
            temp.unlink(missing_ok=True)  # missing: already renamed into place
        except OSError as exc:
            logger.warning("Could not remove temp file %s: %s", temp, exc)


def _write_temp(path: Path, payload: bytes, *, fsync: bool) -> Path:
    temp = temp_path_for(path)
    fd = os.open(temp, _OPEN_FLAGS, 0o644)
    try:
        _write_all(fd, payload)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _discard([temp])
        raise
    os.close(fd)
    return temp


def atomic_write(
    path: Path, payload: bytes, *, fsync: bool = True, sync_folder: bool = True
) -> None:
    """Replace ``path`` with ``payload``: temp file, write, fsync, rename, fsync folder.

    Args:
        path: final name; its folder must exist.
        payload: the complete new contents.
        fsync: make it durable (off only for tests and throw-away output).
        sync_folder: with ``fsync``, also sync the folder (the rename); off when the
            caller syncs it later, before it relies on the rename.

    Raises:
        FileNotFoundError: the folder does not exist (nothing written).
        OSError: other failures; the temp file is removed, ``path`` is old or new.
    """
    temp = _write_temp(path, payload, fsync=fsync)
    try:
        os.replace(temp, path)
    except BaseException:
        _discard([temp])
        raise
    if fsync and sync_folder:
        fsync_dir(path.parent)


def atomic_write_many(
    items: Iterable[tuple[Path, bytes]],
    *,
    fsync: bool = True,
    use_syncfs: bool = True,
    placed: Iterable[Path] = (),
) -> int:
    """Replace many files as one group commit; return how many distinct files were written.

    Phases, and why each file is old-complete or new-complete after a crash at any point:

    1. Write every temp file (no sync yet). A crash here leaves only temp files, which
       no reader trusts and start-up removes; every final name is untouched.
    2. Make all temp data durable before any rename. With ``use_syncfs`` (and at least
       ``SYNCFS_MIN_FILES`` files) one ``syncfs(2)`` per filesystem does it for the whole
       batch: Linux's syncfs waits for writeback, giving "the same guarantees as fsync()
       called on every file" of that filesystem (syncfs(2)), and since 5.8 it reports
       writeback errors seen since its descriptor was opened, which is why that
       descriptor is opened before phase 1. Otherwise each temp file is fsynced as it is
       written (the per-file fallback). No rename is issued before its data is durable,
       so no filesystem (ext4 without ``auto_da_alloc``, XFS, btrfs...) can persist a
       rename pointing at unwritten blocks: that is what makes zero-length or torn files.
    3. ``os.replace`` each temp over its final name, in the given order. rename(2) is
       atomic per file; a crash mid-way leaves some files new and the rest old, each
       complete (callers list checkpoint files before the session file that sums them
       up, so a session file is never ahead of its checkpoints).
    4. fsync each distinct folder once, so the renames are durable before the caller
       acknowledges anything.

    Cost: two sync points per batch (data, then folders) instead of two per file. syncfs
    also flushes other dirty data on the same filesystem (e.g. the embedded database's
    files), so its latency depends on what else is being written there.

    Args:
        items: ``(final path, complete contents)``; a path given twice is written once,
            with its last contents, at the position of its last occurrence.
        fsync: make the batch durable (off only for tests and throw-away output).
        use_syncfs: group the data syncs with syncfs(2) when available.
        placed: files another writer has already made complete and durable and renamed
            into place, but whose folder it has not synced (images, see
            ``pipeline.images.folder_sync_deferred``): their folders are synced in phase 4
            with the batch's, so their renames are durable when the batch is.

    Raises:
        OSError: nothing was acknowledged; temp files are removed, and the final names
            hold old or new complete contents (a retry rewrites them idempotently).
    """
    latest: dict[Path, bytes] = {}
    for path, payload in items:
        latest.pop(path, None)
        latest[path] = payload
    placed_folders = [Path(path).parent for path in placed]
    if not latest and not placed_folders:
        return 0
    folders = list(dict.fromkeys([*placed_folders, *(path.parent for path in latest)]))
    grouped = fsync and use_syncfs and _SYNCFS is not None and len(latest) >= SYNCFS_MIN_FILES
    _write_then_rename(latest, folders, fsync=fsync, grouped=grouped)
    if fsync:
        for folder in folders:
            fsync_dir(folder)
    return len(latest)


def _write_then_rename(
    latest: dict[Path, bytes], folders: list[Path], *, fsync: bool, grouped: bool
) -> None:
    """Phases 1 to 3 of :func:`atomic_write_many`: temp files written, their data made
    durable (one syncfs per filesystem when ``grouped``, else per file), then renamed."""
    staged: list[tuple[Path, Path]] = []
    sync_fds: list[int] = []
    try:
        if grouped:  # opened first, so syncfs vouches for all writeback of this batch
            devices = {os.stat(folder).st_dev: folder for folder in folders}
            sync_fds.extend(open_dir(folder) for folder in devices.values())
        for path, payload in latest.items():
            staged.append((_write_temp(path, payload, fsync=fsync and not grouped), path))
        for fd in sync_fds:
            syncfs(fd)
        for temp, path in staged:
            os.replace(temp, path)
    except BaseException:
        _discard(temp for temp, _ in staged)
        raise
    finally:
        for fd in sync_fds:
            os.close(fd)


def remove_temp_files(folders: Iterable[Path], *, older_than: float | None = None) -> int:
    """Remove our temp files under ``folders`` (recursively, never following symlinks).

    A temp file of a live process (another instance on a shared output folder) is kept,
    unless it is over an hour old.

    Args:
        folders: where to look; missing ones are skipped.
        older_than: only remove temp files last modified before this ``time.time()``
            value (so writes in flight are spared); None removes all abandoned ones.

    Returns:
        How many temp files were removed.
    """
    removed = 0
    for top in folders:
        for folder, dirs, files in os.walk(top, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                if not is_temp_name(name):
                    continue
                temp = Path(folder, name)
                try:
                    mtime = temp.lstat().st_mtime
                    if older_than is not None and mtime >= older_than:
                        continue
                    if not _abandoned(name, mtime, time.time()):
                        continue
                    temp.unlink()
                except FileNotFoundError:
                    continue
                removed += 1
                logger.info("Removed leftover temp file %s", temp)
    return removed
