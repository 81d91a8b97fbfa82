"""Domain errors of the session engine: one root, one class per kind of failure.

The web layer maps each to an HTTP status (``status``); the CLI prints its message.
"""

from __future__ import annotations

from typing import Any


class IllustratorError(Exception):
    """Root of every error the engine raises on purpose."""

    status = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigError(IllustratorError):
    """The configuration file or an environment override is invalid."""


class InvalidIdError(IllustratorError):
    """An id is not a well-formed UUID, so it can never name a record or a file."""

    status = 422


class ValidationError(IllustratorError):
    """A request body or an input file is well-formed but has invalid values."""

    status = 422


class NotFoundError(IllustratorError):
    """A session, manuscript or other record does not exist."""

    status = 404


class ConflictError(IllustratorError):
    """The operation does not fit the record's current state (e.g. pausing a finished session)."""

    status = 409


class ManuscriptBusyError(ConflictError):
    """Another session of the manuscript is live: one live session per manuscript."""

    def __init__(self, manuscript_id: str, live_session_id: str) -> None:
        super().__init__(
            f"session {live_session_id} of manuscript {manuscript_id} is live; pause or cancel"
            " it first, or restart it",
            details={"manuscript_id": manuscript_id, "live_session_id": live_session_id},
        )
        self.live_session_id = live_session_id


class StorageError(IllustratorError):
    """The database or the file system failed to store or load a record."""

    status = 503


class DatabaseUnavailableError(StorageError):
    """The database cannot be reached right now; the files remain the durable record."""


class EmbeddedDatabaseError(StorageError):
    """The embedded SecantusDB server could not be started or adopted."""


class ProviderError(IllustratorError):
    """An analysis, prompt or image provider failed (after its own retries)."""

    status = 502
