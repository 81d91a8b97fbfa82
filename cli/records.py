"""Commands on the stored records themselves (no server needed, no actor started):
``sessions list``, ``verify`` (reads only), ``repair``, ``dump`` and ``restore``.

They open the database the configuration names (starting or adopting the embedded one)
and the output folder, and nothing else: no start-up reconciliation or recovery runs
behind their back, so ``verify`` reports what is stored, and the commands that write say
what they wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from config import Config
from domain import RESUMABLE_STATUSES
from errors import ConflictError
from storage.base import SessionStore
from storage.files import FileStore

Work = Callable[[SessionStore, FileStore], Awaitable[int]]


def register(sessions: Any) -> None:
    """``illustrator sessions list|verify|repair|dump|restore``."""
    listing = sessions.add_parser("list", help="stored sessions with status and progress")
    listing.add_argument("--json", action="store_true", help="print the records (default: off)")
    listing.set_defaults(handler=_sessions_list)

    check = sessions.add_parser(
        "verify",
        help="check every session, reading only: files readable, sequences and events"
        " gap-free, files = database, images = records; exit 1 with a report if not",
    )
    check.set_defaults(handler=_sessions_verify)

    repair = sessions.add_parser(
        "repair",
        help="level the files and the database (as the server's start-up does) and print"
        " every record healed and its direction",
    )
    repair.set_defaults(handler=_sessions_repair)

    dump = sessions.add_parser("dump", help="write a session's recovery bundle")
    dump.add_argument("session_id", help="the session's id (a UUID)")
    dump.add_argument(
        "--output",
        type=Path,
        help="also copy the bundle to this path (default: only sessions/recovery/ID.json)",
    )
    dump.set_defaults(handler=_sessions_dump)

    restore = sessions.add_parser(
        "restore", help="import a recovery bundle into the database and files (then resume it)"
    )
    restore.add_argument("bundle", type=Path, help="the bundle's JSON file")
    restore.add_argument(
        "--force",
        action="store_true",
        help="replace a stored session that is newer than the bundle or differs from it"
        " (default: off: refuse, changing nothing)",
    )
    restore.set_defaults(handler=_sessions_restore)


def _with_stores(config: Config, work: Work) -> int:
    """Run ``work(store, files)`` on the configured database and output folder."""

    async def run() -> int:
        from storage.database import open_database, resolve_store

        handle = await asyncio.to_thread(open_database, config)
        try:
            store = await resolve_store(handle.store_factory(config)())
            try:
                files = FileStore(config.output_dir, fsync=config.persistence.fsync)
                return await work(store, files)
            finally:
                await store.close()
        finally:
            await asyncio.to_thread(handle.stop)

    return asyncio.run(run())


def _describe(base: dict[str, Any], checkpoints: list[Any]) -> Any:
    from actors.state import SessionState

    return SessionState.rebuild(base, checkpoints).describe()


def _sessions_list(config: Config, args: argparse.Namespace) -> int:
    async def work(store: SessionStore, files: FileStore) -> int:
        documents = await store.list_sessions(limit=1000)
        if args.json:
            print(json.dumps(documents, default=str, indent=2))
            return 0
        if not documents:
            print("No sessions.")
            return 0
        print(
            f"{'SESSION':36}  {'STATUS':11}  {'PROGRESS':>8}  {'CHAPTERS':>8}  {'IMAGES':>6}"
            "  STARTED"
        )
        for d in documents:
            chapters = f"{len(d.get('processed_chapters') or [])}/{d.get('total_chapters') or 0}"
            print(
                f"{d.get('session_id', '?'):36}  {d.get('status', '?'):11}"
                f"  {d.get('progress_percent', 0):>7}%  {chapters:>8}"
                f"  {d.get('total_images_generated', 0):>6}  {str(d.get('started_at', ''))[:19]}"
            )
        return 0

    return _with_stores(config, work)


def _sessions_verify(config: Config, args: argparse.Namespace) -> int:
    from storage.verify import verify

    async def work(store: SessionStore, files: FileStore) -> int:
        report = await verify(
            store, files, config.output_dir, keep_logs=config.processing.max_logs_per_session
        )
        print(report.render())
        return 0 if report.ok else 1

    return _with_stores(config, work)


def _sessions_repair(config: Config, args: argparse.Namespace) -> int:
    from storage.leases import local_instance_id
    from storage.reconcile import reconcile, reconcile_manuscripts

    async def work(store: SessionStore, files: FileStore) -> int:
        await store.ensure_indexes()
        report = await reconcile(
            store,
            files,
            _describe,
            embedded_keep=config.persistence.embedded_checkpoints,
            owner=local_instance_id(),  # sessions a live server runs are left to it
            level_live=True,  # no recovery follows to bring lagging summaries up
        )
        await reconcile_manuscripts(store, files, report)
        print(f"Checked {report.sessions_checked} sessions.")
        for title, lines in (
            ("healed", report.healed),
            ("not healed", report.skipped),
            ("left to the instance running them", report.not_ours),
        ):
            if lines:
                print(f"{len(lines)} {title}:")
                print("\n".join(f"  - {line}" for line in lines))
        if not report.healed:
            print("Nothing to heal: files and database hold the same records.")
        return 1 if report.skipped else 0

    return _with_stores(config, work)


def _sessions_dump(config: Config, args: argparse.Namespace) -> int:
    from actors.engine import Engine

    async def work(store: SessionStore, files: FileStore) -> int:
        # An engine whose actors never start: dumping needs only its readers.
        engine = Engine(config, None)
        engine.store = store
        path = await engine.dump_session(args.session_id)
        if args.output is not None:
            shutil.copyfile(path, args.output)
            path = args.output
        print(path)
        return 0

    return _with_stores(config, work)


def _sessions_restore(config: Config, args: argparse.Namespace) -> int:
    from actors.state import SessionState
    from storage.bundles import load_bundle_file, restore_bundle

    async def work(store: SessionStore, files: FileStore) -> int:
        bundle = await asyncio.to_thread(load_bundle_file, files, args.bundle)
        await store.ensure_indexes()
        try:
            result = await restore_bundle(
                bundle,
                store,
                files,
                _describe,
                embedded_keep=config.persistence.embedded_checkpoints,
                force=args.force,
            )
        except ConflictError as exc:
            if "newer" not in exc.details:
                raise
            raise ConflictError(
                f"{exc.message} Pass --force to replace the session with the bundle.",
                details=exc.details,
            ) from None
        for line in result.replaced:
            print(f"Replaced: {line}")
        found = await store.get_session_for_resume(result.session_id)
        assert found is not None, "restored session not found"
        state = SessionState.rebuild(*found)
        print(
            f"Restored session {result.session_id}: {state.status}, checkpoint"
            f" {state.last_sequence_number}, {len(state.processed_chapters)}/"
            f"{state.total_chapters} chapters done."
        )
        if state.status in RESUMABLE_STATUSES:
            print(f"Resume it with: illustrator sessions resume {result.session_id}")
        return 0

    return _with_stores(config, work)
