"""``illustrator process FILE``: illustrate a manuscript in this process, with a progress bar.

Ctrl-C pauses the session (a pause checkpoint is written); running the same command
again resumes the manuscript's latest session where it stopped, unless it completed:
then, as ``POST /api/process`` does, a new session starts (the earlier one and its
images stay). ``--new`` starts a new session even when one could resume.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import signal
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from cli.terminal import TERMINAL
from config import Config
from domain import STOPPED_STATUSES
from errors import IllustratorError

logger = logging.getLogger(__name__)

MANUSCRIPT_NAMESPACE = uuid.UUID("6f1c7c1e-8d1f-4a53-9c1b-9b7f3f0e2a10")
FINAL_STATUSES = frozenset(STOPPED_STATUSES)


def moments(text: str) -> int:
    """An argparse type: emotional moments per chapter, 1 to 20."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= 20:
        raise argparse.ArgumentTypeError(f"must be 1..20, got {value}")
    return value


def register(commands: Any) -> None:
    """``illustrator process``."""
    process = commands.add_parser("process", help="illustrate a manuscript file in-process")
    process.add_argument("file", type=Path, help="manuscript: .json, .txt or .md")
    process.add_argument(
        "--style",
        default="digital painting",
        help="art style, style_config.art_style (default: %(default)s)",
    )
    process.add_argument(
        "--palette", default="", help="colour palette, style_config.color_palette (default: none)"
    )
    process.add_argument(
        "--max-moments",
        type=moments,
        default=None,
        help="emotional moments per chapter, 1-20"
        " (default: processing.default_max_moments from the config, 10)",
    )
    process.add_argument(
        "--new",
        action="store_true",
        help="start a new session even if the latest one could resume (default: off: resume"
        " a paused or interrupted session; after a completed one a new session starts anyway)",
    )
    process.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    process.add_argument(
        "--events-jsonl",
        type=Path,
        metavar="PATH",
        help="append every session event (sent only once durable) to PATH as JSON lines"
        " (default: none)",
    )
    process.set_defaults(handler=_process)


def _process(config: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_process_async(config, args))


async def _process_async(config: Config, args: argparse.Namespace) -> int:
    from actors.engine import Engine
    from storage.database import open_database

    manuscript, manuscript_id = _read_manuscript(args.file)
    handle = await asyncio.to_thread(open_database, config)
    engine = Engine(config, handle.store_factory(config))
    try:
        await engine.start()
        await engine.recover(auto_resume=False)  # a killed earlier run becomes resumable
        await engine.save_manuscript(manuscript, manuscript_id)
        finished = asyncio.get_running_loop().create_future()
        sid = await _resume_or_start(engine, args, manuscript, manuscript_id, finished)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(_pause(engine, sid)))
        status = await finished
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        TERMINAL.end_bar()
        print(f"Session {sid} {status}.", flush=True)
        if status == "paused":
            if args.new:
                # The same command with --new would start over, not resume.
                print(f"Run `illustrator process {args.file}` (without --new) to resume it.")
            else:
                print("Run the same command again to resume.")
        return 0 if status in ("completed", "paused") else 1
    finally:
        TERMINAL.end_bar()
        await engine.stop()
        await asyncio.to_thread(handle.stop)


async def _resume_or_start(
    engine: Any,
    args: argparse.Namespace,
    manuscript: Any,
    manuscript_id: str,
    finished: asyncio.Future[str],
) -> str:
    """Resume the manuscript's latest session if it can resume, else start a new one."""
    previous = None if args.new else await _latest_session(engine, manuscript_id)
    if previous is not None and previous.get("status") == "completed":
        print(
            f"Manuscript already illustrated by session {previous['session_id']}"
            f" ({previous.get('total_images_generated', 0)} images); starting a new session,"
            " as POST /api/process does (the earlier session and its images stay).",
            flush=True,
        )
        previous = None
    if previous is not None and previous.get("status") != "cancelled":
        sid = str(previous["session_id"])
        state = await engine.load_state(sid)
        if state.current_chapter:
            where = f"chapter {state.current_chapter}"
        elif state.processed_chapters:
            where = f"chapter {state.last_completed_chapter + 1}"
        else:
            where = "the start"
        print(
            f"Resuming session {sid} from {where},"
            f" {state.last_work_checkpoint or 'not started'}"
            f" ({len(state.processed_chapters)}/"
            f"{state.total_chapters or len(manuscript.chapters)} chapters done)",
            flush=True,
        )
        _follow(engine, sid, finished, quiet=args.quiet, events_path=args.events_jsonl)
        await engine.resume_session(sid)
        return sid
    style = {"art_style": args.style}
    if args.palette:
        style["color_palette"] = args.palette
    started = await engine.start_session(
        manuscript_id, style_config=style, max_emotional_moments=args.max_moments
    )
    sid = str(started["session_id"])
    print(
        f"Started session {sid}: '{manuscript.title}', {len(manuscript.chapters)} chapters",
        flush=True,
    )
    _follow(engine, sid, finished, quiet=args.quiet, events_path=args.events_jsonl)
    return sid


async def _pause(engine: Any, sid: str) -> None:
    if engine.supervisor is None:  # already shutting down
        return
    TERMINAL.line("Pausing at the next step boundary...")
    try:
        await engine.pause_session(sid)
    except IllustratorError as exc:  # already finishing
        logger.debug("pause: %s", exc)


def _follow(
    engine: Any,
    sid: str,
    finished: asyncio.Future[str],
    *,
    quiet: bool,
    events_path: Path | None = None,
) -> None:
    events_file = events_path.open("a", encoding="utf-8") if events_path is not None else None

    def on_event(entry: Any) -> None:
        frame = entry.to_frame()
        kind = frame["type"]
        if events_file is not None:
            events_file.write(json.dumps(frame) + "\n")
            events_file.flush()
        if kind == "progress" and not quiet:
            done = int(frame["progress"] / 2.5)
            TERMINAL.bar(
                f"[{'#' * done}{'-' * (40 - done)}] {frame['progress']:3d}%  chapters"
                f" {frame['chapters_processed']}/{frame['total_chapters']}"
                f"  images {frame['images_generated']}"
            )
        elif kind == "complete" and not finished.done():
            finished.set_result("completed")
        elif kind == "error" and not finished.done():
            finished.set_result("failed")
        elif kind == "status" and frame.get("status") in FINAL_STATUSES and not finished.done():
            finished.set_result(frame["status"])

    engine.hub.subscribe(sid, on_event)


def _read_manuscript(path: Path) -> tuple[Any, str]:
    from pipeline.manuscripts import decode_upload, parse_manuscript_json, parse_manuscript_text

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IllustratorError(f"cannot read {path}: {exc.strerror}") from exc
    if path.suffix.lower() == ".json":
        try:
            manuscript = parse_manuscript_json(json.loads(decode_upload(raw)))
        except json.JSONDecodeError as exc:
            raise IllustratorError(f"{path} is not valid JSON: {exc}") from exc
    else:
        manuscript = parse_manuscript_text(decode_upload(raw))
        if not manuscript.title or manuscript.title == "Untitled":
            manuscript = replace(manuscript, title=path.stem.replace("_", " ").title())
    digest = hashlib.sha256(raw).hexdigest()
    manuscript_id = str(uuid.uuid5(MANUSCRIPT_NAMESPACE, f"{path.resolve()}:{digest}"))
    return manuscript, manuscript_id


async def _latest_session(engine: Any, manuscript_id: str) -> dict[str, Any] | None:
    from errors import DatabaseUnavailableError

    documents: list[dict[str, Any]] = []
    if engine.store is not None:
        try:
            documents = await engine.store.list_sessions(manuscript_id=manuscript_id, limit=50)
        except DatabaseUnavailableError:
            documents = []
    if not documents:
        report = await asyncio.to_thread(engine.files.scan)
        documents = [d for d in report.sessions.values() if d.get("manuscript_id") == manuscript_id]
        documents.sort(key=lambda d: str(d.get("started_at") or ""), reverse=True)
    return documents[0] if documents else None
