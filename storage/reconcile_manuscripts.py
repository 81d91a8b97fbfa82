"""Reconciliation of manuscripts: a manuscript file the database lacks is copied into it."""

from __future__ import annotations

import asyncio

from domain import manuscript_id as valid_manuscript_id
from errors import DatabaseUnavailableError, IllustratorError
from storage.base import SessionStore
from storage.files import FileStore
from storage.reconcile_report import ReconcileReport
from storage.storable import database_problem


async def reconcile_manuscripts(
    store: SessionStore, files: FileStore, report: ReconcileReport | None = None
) -> int:
    """Copy manuscript files the database lacks into it; returns how many were copied.

    A file that is unreadable, foreign, or holds what the database cannot store is
    skipped with a warning (in ``report.skipped`` when given).
    """
    report = report if report is not None else ReconcileReport()
    folder = files.manuscripts_dir
    paths = await asyncio.to_thread(lambda: sorted(folder.glob("*.json")))
    copied = 0
    for path in paths:
        try:
            mid = valid_manuscript_id(path.stem)
        except IllustratorError:
            report.skip("ignoring foreign file %s", path)
            continue
        try:
            if await store.get_manuscript(mid) is not None:
                continue
            document = await asyncio.to_thread(files.load_json, path)
            document.pop("format_version", None)
            why = database_problem(document)
            if why is not None:
                report.skip("manuscript file %s holds %s; not copied", path, why)
                continue
            await store.create_manuscript(document)
        except DatabaseUnavailableError:
            raise
        except IllustratorError as exc:
            report.skip("manuscript file %s skipped: %s", path, exc)
            continue
        copied += 1
        report.manuscripts_to_database += 1
        report.decide("manuscript %s copied from its file to the database", mid)
        report.heal(f"manuscript {mid}: file -> database")
    return copied
