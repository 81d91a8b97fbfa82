"""Setting aside the database records that can never be written.

A record the database refuses (text that is not UTF-8, a document over the size limit,
a field name the server rejects) fails every retry of its batch, so left at the head of
the writer's backlog it would stop every later record. The writer splits such a batch
in halves until each refused record stands alone, writes it to
``sessions/quarantine/{session_id}_{kind}_{unique}.json`` (what ``sessions verify``
lists) and writes every other record as usual. The files keep every record in any case:
a quarantined record is one the database lacks, not one that is lost.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain import FORMAT_VERSION, isoformat, utcnow
from errors import DatabaseUnavailableError
from storage import atomic
from storage.records import Checkpoint, PersistBatch
from storage.storable import database_problem

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")


@dataclass(frozen=True)
class Record:
    """One database record of a batch: ``kind`` is session, image, log, checkpoint or
    summary (a session document's update with the compact checkpoints it embeds)."""

    kind: str
    session_id: str
    item: Any

    def document(self) -> dict[str, Any]:
        """The record as the quarantine file holds it."""
        match self.kind:
            case "session":
                return dict(self.item)
            case "image" | "log" | "checkpoint":
                return dict(self.item.to_document())
            case _:
                fields, checkpoints, epoch = self.item
                return {
                    "fields": fields,
                    "checkpoints": [cp.compact() for cp in checkpoints],
                    "epoch": epoch,
                }


def split(batch: PersistBatch) -> list[Record]:
    """``batch`` as single records, in the order the store writes them."""
    records = [Record("session", str(d.get("_id", "")), d) for d in batch.new_sessions]
    records += [Record("image", image.session_id, image) for image in batch.images]
    records += [Record("log", entry.session_id, entry) for entry in batch.logs]
    records += [Record("checkpoint", cp.session_id, cp) for cp in batch.checkpoints]
    embedded = batch.checkpoints if batch.summary_checkpoints is None else batch.summary_checkpoints
    by_session: dict[str, list[Checkpoint]] = {}
    for cp in embedded:
        by_session.setdefault(cp.session_id, []).append(cp)
    for sid in dict.fromkeys([*batch.session_updates, *by_session]):
        fields = batch.session_updates.get(sid, {})
        item = (fields, by_session.get(sid, []), batch.session_epochs.get(sid))
        records.append(Record("summary", sid, item))
    return records


def join(records: list[Record]) -> PersistBatch:
    """The batch that writes exactly ``records``."""
    batch = PersistBatch(summary_checkpoints=[])
    assert batch.summary_checkpoints is not None
    for record in records:
        match record.kind:
            case "session":
                batch.new_sessions.append(record.item)
            case "image":
                batch.images.append(record.item)
            case "log":
                batch.logs.append(record.item)
            case "checkpoint":
                batch.checkpoints.append(record.item)
            case _:
                fields, checkpoints, epoch = record.item
                if fields:
                    batch.session_updates[record.session_id] = fields
                batch.summary_checkpoints.extend(checkpoints)
                if epoch is not None:
                    batch.session_epochs[record.session_id] = epoch
    return batch


def problem_of(record: Record) -> str | None:
    """Why the database can never store ``record`` (found without asking it), or None."""
    match record.kind:
        case "session" | "image" | "log" | "checkpoint":
            return database_problem(record.document())
        case _:
            fields, _checkpoints, _epoch = record.item
            return database_problem({"$set": fields})


Writer = Callable[[PersistBatch], Awaitable[None]]


class Quarantine:
    """Finds the refused records of a failed batch and files them away."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.folder = root / "sessions" / "quarantine"
        self.fsync = fsync
        self.count = 0

    async def write_around(self, batch: PersistBatch, write: Writer, error: Exception) -> None:
        """Write every record of ``batch`` the database accepts; quarantine the others.

        ``batch`` failed as a whole with ``error`` (not a connection failure). Records
        with a value the database can never hold are set aside at once; the rest is
        written in halves, down to single records, each refused one quarantined.

        Raises:
            DatabaseUnavailableError: the database went away meanwhile; what was
                written stays written (every write is idempotent), the caller retries.
        """
        records = split(batch)
        keep: list[Record] = []
        for record in records:
            why = problem_of(record)
            if why is None:
                keep.append(record)
            else:
                self.put(record, f"the database cannot store it: {why}")
        if keep:
            await self._halve(keep, write, error if len(keep) == len(records) else None)

    async def _halve(self, records: list[Record], write: Writer, known: Exception | None) -> None:
        if known is None:
            try:
                await write(join(records))
                return
            except DatabaseUnavailableError:
                raise
            except Exception as exc:  # noqa: BLE001 - any refusal: split further
                known = exc
        if len(records) == 1:
            self.put(records[0], f"the database refused it: {type(known).__name__}: {known}")
            return
        middle = len(records) // 2
        await self._halve(records[:middle], write, None)
        await self._halve(records[middle:], write, None)

    def put(self, record: Record, reason: str) -> Path:
        """Write ``record`` to the quarantine folder (atomically) and count it."""
        sid = record.session_id if _SAFE_ID.match(record.session_id) else "unknown"
        path = self.folder / f"{sid}_{record.kind}_{uuid.uuid4().hex[:12]}.json"
        document = {
            "format_version": FORMAT_VERSION,
            "session_id": record.session_id,
            "kind": record.kind,
            "reason": reason[:2000],
            "quarantined_at": isoformat(utcnow()),
            "record": _printable(record.document()),
        }
        atomic.make_dirs(self.folder, fsync=self.fsync)
        atomic.atomic_write(path, atomic.encode_json(document, indent=2), fsync=self.fsync)
        self.count += 1
        logger.error(
            "%s record of session %s set aside in %s: %s", record.kind, sid, path.name, reason
        )
        return path


def _printable(value: Any) -> Any:
    """``value`` with whatever JSON cannot hold (bytes, odd objects) as text."""
    if isinstance(value, dict):
        return {str(key): _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return repr(value)


__all__ = ["Quarantine", "Record", "join", "split"]
