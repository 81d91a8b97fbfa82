"""What start-up reconciliation (storage.reconcile) read, found and did."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from storage.files import ScanReport
from storage.records import Checkpoint

logger = logging.getLogger("storage.reconcile")


@dataclass
class StartupReads:
    """What reconciliation read, for start-up recovery to use instead of reading it again."""

    scan: ScanReport
    """The files as reconciliation found them."""
    unchanged: dict[str, tuple[dict[str, Any], list[Checkpoint]]]
    """Database document and checkpoints of the sessions reconciliation wrote nothing for
    (their files are as in ``scan`` too); the others must be read again."""
    reconciled: bool = True
    """False: no reconciliation ran (no database at start-up), so nothing was written
    since the scan and it holds every session's files as they are."""


@dataclass
class ReconcileReport:
    """What reconciliation found and did."""

    reads: StartupReads | None = field(default=None, repr=False)
    """What it read (see StartupReads); taken by the engine for its recovery."""
    sessions_checked: int = 0
    checkpoints_to_database: int = 0
    checkpoints_to_files: int = 0
    sessions_created_in_database: int = 0
    session_files_rewritten: int = 0
    manuscripts_to_database: int = 0
    conflicts: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    healed: list[str] = field(default_factory=list)
    """One line per record written, naming its direction (file -> database, or back)."""
    skipped: list[str] = field(default_factory=list)
    """Sessions or records left as they are, and why (e.g. unstorable file records)."""
    not_ours: list[str] = field(default_factory=list)
    """Sessions another live instance holds (left to it)."""

    def decide(self, message: str, *args: Any) -> None:
        """Log and keep one decision."""
        text = message % args
        logger.info("reconcile: %s", text)
        self.decisions.append(text)

    def heal(self, text: str) -> None:
        """Keep one record written (its decision is logged separately)."""
        self.healed.append(text)

    def skip(self, message: str, *args: Any) -> None:
        """Warn about and keep one record or session left unhealed."""
        text = message % args
        logger.warning("reconcile: %s", text)
        self.skipped.append(text)
