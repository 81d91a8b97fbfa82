"""The JSON file store: session files, checkpoint files and recovery bundles on disk.

Layout under the output root (``illustrator_output/``)::

    sessions/active_sessions/{session_id}.json       the spec's session file format
    sessions/checkpoints/{session_id}_{seq:08d}.json one file per checkpoint
    sessions/recovery/{session_id}.json              self-contained recovery bundle
    generated_images/{session_id}/...                images (written by the pipeline)
    exports/                                         exported manuscripts

Writes are atomic and durable (:mod:`storage.atomic`) and stamp ``format_version``.
Loading never trusts a bad file and never raises for one: it skips it and reports a
:class:`FileProblem`, so start-up recovery always gets every valid record there is.
Ids are validated before any path is built from them. The PersistenceActor and
start-up recovery call this synchronously from worker threads.

The package's rooms: :mod:`.layout` (the folders, the path of each file, ids checked),
:mod:`.formats` (what a valid session file, checkpoint file and bundle is),
:mod:`.writer` (writing and deleting), :mod:`.reader` (loading and the start-up scan),
:mod:`.store` (the :class:`FileStore` that joins the two halves).
"""

from storage.atomic import MAX_FILE_BYTES, FileProblem, FileProblemError, ProblemKind, load_json
from storage.files.formats import load_bundle
from storage.files.reader import ScanReport
from storage.files.store import FileStore

__all__ = [
    "MAX_FILE_BYTES",
    "FileProblem",
    "FileProblemError",
    "FileStore",
    "ProblemKind",
    "ScanReport",
    "load_bundle",
    "load_json",
]
