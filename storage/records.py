"""Records the engine stores, with their MongoDB/JSON document forms.

A :class:`Checkpoint` is written once to the ``checkpoints`` collection and to
``sessions/checkpoints/{session_id}_{seq}.json`` with its step's bulky results
(``checkpoint_data``: that chapter's moments, prompts or image records, stored once);
the session document embeds only :meth:`Checkpoint.compact` forms of the latest ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from domain import CheckpointType, ProcessingStep, SessionId, isoformat, utcnow


@dataclass(frozen=True)
class Checkpoint:
    """One ProcessingCheckpoint: a milestone the session reached and must not repeat."""

    session_id: SessionId
    """The one id of the session for its whole life."""
    sequence_number: int
    """Per session, gap-free from 1, never reused across pause/resume/crash."""
    checkpoint_type: CheckpointType
    """Which of the spec's ten milestones this is."""
    step: ProcessingStep
    """The processing step the milestone belongs to."""
    chapter_number: int | None
    """Chapter being processed, if any."""
    next_action: str
    """What a resumed session does next (human readable)."""
    progress_percent: int
    """0..100 at this milestone."""
    checkpoint_data: dict[str, Any] = field(default_factory=dict)
    """This step's results (moments, prompts, image records), stored once."""
    processing_state: dict[str, Any] = field(default_factory=dict)
    """Compact counters: processed chapters, images generated, current chapter."""
    epoch: int = 0
    """Ownership epoch of the writer (fences stale writers)."""
    created_at: datetime = field(default_factory=utcnow)

    @property
    def key(self) -> str:
        """Deterministic document id: retries of the same checkpoint collide on purpose."""
        return f"{self.session_id}:{self.sequence_number:08d}"

    def compact(self) -> dict[str, Any]:
        """Small form embedded in the session document."""
        return {
            "sequence_number": self.sequence_number,
            "checkpoint_type": str(self.checkpoint_type),
            "step": str(self.step),
            "chapter_number": self.chapter_number,
            "next_action": self.next_action,
            "progress_percent": self.progress_percent,
            "images_generated": self.processing_state.get("total_images_generated", 0),
            "created_at": self.created_at,
        }

    def to_document(self) -> dict[str, Any]:
        """MongoDB form (datetimes stay datetimes)."""
        return {
            "_id": self.key,
            "session_id": self.session_id,
            "sequence_number": self.sequence_number,
            "checkpoint_type": str(self.checkpoint_type),
            "step": str(self.step),
            "chapter_number": self.chapter_number,
            "next_action": self.next_action,
            "progress_percent": self.progress_percent,
            "checkpoint_data": self.checkpoint_data,
            "processing_state": self.processing_state,
            "epoch": self.epoch,
            "created_at": self.created_at,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-file form (datetimes as ISO-8601 text)."""
        doc = self.to_document()
        doc["created_at"] = isoformat(self.created_at)
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Checkpoint:
        """Inverse of :meth:`to_document` and :meth:`to_json`."""
        created = _parse_time(doc.get("created_at"))
        return cls(
            session_id=SessionId(doc["session_id"]),
            sequence_number=int(doc["sequence_number"]),
            checkpoint_type=CheckpointType(doc["checkpoint_type"]),
            step=ProcessingStep(doc["step"]),
            chapter_number=doc.get("chapter_number"),
            next_action=doc.get("next_action", ""),
            progress_percent=int(doc.get("progress_percent", 0)),
            checkpoint_data=dict(doc.get("checkpoint_data") or {}),
            processing_state=dict(doc.get("processing_state") or {}),
            epoch=int(doc.get("epoch", 0)),
            created_at=created or utcnow(),
        )


@dataclass(frozen=True)
class LogEntry:
    """One ProcessingLog / event: also the store that WebSocket replay reads from."""

    session_id: SessionId
    event_seq: int
    """Per-session event sequence number (gap-free, shared by all event types)."""
    type: str
    """What it reports (domain.EventType; stored as its string, read back as stored)."""
    payload: dict[str, Any]
    """The frame's fields (without ``type``, ``session_id``, ``event_seq``)."""
    level: str = "info"
    message: str = ""
    chapter_number: int | None = None
    step_name: str | None = None
    timestamp: datetime = field(default_factory=utcnow)

    @property
    def key(self) -> str:
        """Deterministic document id, so a retried insert is a no-op."""
        return f"{self.session_id}:{self.event_seq:010d}"

    def to_document(self) -> dict[str, Any]:
        """MongoDB form."""
        return {
            "_id": self.key,
            "session_id": self.session_id,
            "event_seq": self.event_seq,
            "type": self.type,
            "payload": self.payload,
            "level": self.level,
            "message": self.message,
            "chapter_number": self.chapter_number,
            "step_name": self.step_name,
            "timestamp": self.timestamp,
        }

    @cached_property
    def frame_json(self) -> str:
        """The frame as JSON text, encoded once however many subscribers receive it."""
        return json.dumps(self.to_frame())

    def to_frame(self) -> dict[str, Any]:
        """The WebSocket frame this event is sent as."""
        return {
            "type": self.type,
            "session_id": self.session_id,
            "event_seq": self.event_seq,
            "timestamp": isoformat(self.timestamp),
            **self.payload,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> LogEntry:
        """Inverse of :meth:`to_document`."""
        ts = _parse_time(doc.get("timestamp"))
        return cls(
            session_id=SessionId(doc["session_id"]),
            event_seq=int(doc["event_seq"]),
            type=doc["type"],
            payload=dict(doc.get("payload") or {}),
            level=doc.get("level", "info"),
            message=doc.get("message", ""),
            chapter_number=doc.get("chapter_number"),
            step_name=doc.get("step_name"),
            timestamp=ts or utcnow(),
        )


@dataclass(frozen=True)
class ImageRecord:
    """One SessionImage: an image file made for one moment of one chapter."""

    session_id: SessionId
    chapter_number: int
    scene_number: int
    generation_order: int
    """Overall order of generation within the session (1-based)."""
    file_path: str
    """Path relative to the output directory."""
    web_url: str
    prompt_used: str
    checkpoint_sequence: int
    """Sequence number of the IMAGES_GENERATING checkpoint that recorded it."""
    illustration_id: str = ""
    created_at: datetime = field(default_factory=utcnow)

    @property
    def key(self) -> str:
        """Deterministic id: one record per (session, chapter, scene)."""
        return f"{self.session_id}:{self.chapter_number:05d}:{self.scene_number:03d}"

    def to_document(self) -> dict[str, Any]:
        """MongoDB form."""
        return {
            "_id": self.key,
            "session_id": self.session_id,
            "illustration_id": self.illustration_id or self.key,
            "chapter_number": self.chapter_number,
            "scene_number": self.scene_number,
            "generation_order": self.generation_order,
            "file_path": self.file_path,
            "web_url": self.web_url,
            "prompt_used": self.prompt_used,
            "checkpoint_sequence": self.checkpoint_sequence,
            "created_at": self.created_at,
        }

    def to_json(self) -> dict[str, Any]:
        """JSON-file form."""
        doc = self.to_document()
        doc["created_at"] = isoformat(self.created_at)
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> ImageRecord:
        """Inverse of :meth:`to_document` and :meth:`to_json`."""
        created = _parse_time(doc.get("created_at"))
        return cls(
            session_id=SessionId(doc["session_id"]),
            chapter_number=int(doc["chapter_number"]),
            scene_number=int(doc["scene_number"]),
            generation_order=int(doc["generation_order"]),
            file_path=doc["file_path"],
            web_url=doc["web_url"],
            prompt_used=doc.get("prompt_used", ""),
            checkpoint_sequence=int(doc.get("checkpoint_sequence", 0)),
            illustration_id=doc.get("illustration_id", ""),
            created_at=created or utcnow(),
        )


@dataclass
class PersistBatch:
    """Everything one group commit writes to the database.

    ``session_updates`` maps a session id to the ``$set`` fields of its document
    (status, progress, counters); ``checkpoints`` are pushed (compact) onto it.
    """

    checkpoints: list[Checkpoint] = field(default_factory=list)
    session_updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: list[LogEntry] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)
    new_sessions: list[dict[str, Any]] = field(default_factory=list)
    """Full session documents to create first (a retry is a no-op)."""
    summary_checkpoints: list[Checkpoint] | None = None
    """Checkpoints whose compact forms go into the session documents; None means
    ``checkpoints``. The PersistenceActor passes the ones it held back (write-behind)."""
    session_epochs: dict[str, int] = field(default_factory=dict)
    """Session id -> the lease epoch the writer holds: its session updates apply only
    while the document still has that epoch (fencing; storage.leases)."""

    def __len__(self) -> int:
        return (
            len(self.checkpoints)
            + len(self.session_updates)
            + len(self.logs)
            + len(self.images)
            + len(self.new_sessions)
        )


def _parse_time(value: Any) -> datetime | None:
    """A stored time: datetimes from the drivers, ISO-8601 text from the JSON files."""
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value if isinstance(value, datetime) else None
