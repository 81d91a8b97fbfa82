"""FileStore: the JSON files under one output root, written atomically, loaded defensively."""

from __future__ import annotations

from storage.files.reader import FileReader
from storage.files.writer import FileWriter


class FileStore(FileWriter, FileReader):
    """JSON files under one output root, written atomically, loaded defensively.

    Holds no mutable state besides its settings, so worker threads may share one
    (temp names are unique); there should still be one writer per file at a time
    (the PersistenceActor).

    Args:
        root: the output directory (``illustrator_output/``).
        fsync: make every write durable; turn off only for tests and benchmarks.
    """
