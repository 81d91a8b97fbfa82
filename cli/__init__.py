"""Illustrator command line.

``illustrator serve`` runs the server; ``illustrator process FILE`` illustrates a
manuscript in-process (Ctrl-C pauses; running it again resumes); ``illustrator
sessions list`` shows the stored sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import signal
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from config import Config, load_config
from errors import ConfigError, IllustratorError

logger = logging.getLogger("illustrator")

MANUSCRIPT_NAMESPACE = uuid.UUID("6f1c7c1e-8d1f-4a53-9c1b-9b7f3f0e2a10")
FINAL_STATUSES = {"completed", "paused", "cancelled", "failed"}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``illustrator`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"illustrator: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        code = args.handler(config, args)
    except IllustratorError as exc:
        print(f"illustrator: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="illustrator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", metavar="PATH", help="configuration file (default: ./config.toml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP/WebSocket server")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.set_defaults(handler=_serve)

    process = commands.add_parser("process", help="illustrate a manuscript file in-process")
    process.add_argument("file", type=Path, help="manuscript: .json, .txt or .md")
    process.add_argument(
        "--style", default="digital painting", help="art style (style_config.art_style)"
    )
    process.add_argument(
        "--palette", default="", help="colour palette (style_config.color_palette)"
    )
    process.add_argument(
        "--max-moments", type=int, default=None, help="emotional moments per chapter (1-20)"
    )
    process.add_argument("--new", action="store_true", help="start over instead of resuming")
    process.add_argument("--quiet", action="store_true", help="no progress bar")
    process.add_argument(
        "--events-jsonl",
        type=Path,
        metavar="PATH",
        help="append every session event (sent only once durable) to PATH as JSON lines",
    )
    process.set_defaults(handler=_process)

    watch = commands.add_parser("watch", help="print a session's WebSocket events as JSON lines")
    watch.add_argument("session_id")
    watch.add_argument(
        "--url", default=None, help="server URL (default: http://HOST:PORT from the config)"
    )
    watch.add_argument(
        "--after", type=int, default=None, help="replay events after this event_seq first"
    )
    watch.add_argument("--token", default=None, help="bearer token when server.api_tokens is set")
    watch.set_defaults(handler=_watch)

    sessions = commands.add_parser("sessions", help="inspect stored sessions")
    sessions_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    listing = sessions_commands.add_parser("list", help="sessions with status and progress")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_sessions_list)
    dump = sessions_commands.add_parser("dump", help="write a session's recovery bundle")
    dump.add_argument("session_id")
    dump.add_argument("--output", type=Path, help="also copy the bundle to this path")
    dump.set_defaults(handler=_sessions_dump)
    restore = sessions_commands.add_parser(
        "restore", help="import a recovery bundle (it can then resume)"
    )
    restore.add_argument("bundle", type=Path)
    restore.set_defaults(handler=_sessions_restore)
    check = sessions_commands.add_parser(
        "verify", help="check every session: gap-free sequences, files = database, images = records"
    )
    check.set_defaults(handler=_sessions_verify)

    import loadtest

    load = commands.add_parser("loadtest", help="load-test a local server over REST and WebSockets")
    loadtest.add_arguments(load)
    load.set_defaults(handler=lambda config, args: loadtest.run(args))
    return parser


# -- serve ---------------------------------------------------------------------------------


def _serve(config: Config, args: argparse.Namespace) -> int:
    from aiohttp import web

    from web.app import create_app

    server = replace(
        config.server,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
    )
    config = replace(config, server=server)
    # run_app turns SIGINT and SIGTERM into a graceful shutdown (cleanup_ctx runs).
    try:
        web.run_app(
            create_app(config),
            host=server.host,
            port=server.port,
            print=lambda text: print(
                text.replace("(Press CTRL+C to quit)", "(Ctrl-C pauses sessions and stops)"),
                flush=True,
            ),
            shutdown_timeout=30,
        )
    except OSError as exc:  # typically the port is taken; everything was shut down cleanly
        print(
            f"illustrator: cannot listen on {server.host}:{server.port}: {exc.strerror or exc}\n"
            f"Choose another port: --port N or ILLUSTRATOR_SERVER_PORT=N",
            file=sys.stderr,
        )
        return 1
    return 0


# -- watch -------------------------------------------------------------------------------


def _watch(config: Config, args: argparse.Namespace) -> int:
    """Follow /ws/processing/{id} until the session completes, fails, pauses or is cancelled."""
    import aiohttp

    base = args.url or f"http://{config.server.host}:{config.server.port}"
    query = {} if args.after is None else {"after": str(args.after)}
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}

    async def run() -> int:
        async with aiohttp.ClientSession(headers=headers) as http:
            try:
                socket = await http.ws_connect(
                    f"{base}/ws/processing/{args.session_id}", params=query
                )
            except aiohttp.WSServerHandshakeError as exc:
                print(f"illustrator: {exc.status} {exc.message}", file=sys.stderr)
                return 1
            except aiohttp.ClientError as exc:
                print(f"illustrator: cannot reach {base}: {exc}", file=sys.stderr)
                return 1
            async with socket:
                async for message in socket:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    print(message.data, flush=True)
                    frame = json.loads(message.data)
                    kind, status = frame.get("type"), frame.get("status")
                    if kind in ("complete", "error") or (
                        kind == "status" and status in FINAL_STATUSES
                    ):
                        return 0
                    if kind == "snapshot" and status in FINAL_STATUSES and args.after is None:
                        return 0  # already finished: nothing more will come
        return 0

    return asyncio.run(run())


# -- process -------------------------------------------------------------------------------


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
        previous = None if args.new else await _latest_session(engine, manuscript_id)
        if previous is not None and previous.get("status") == "completed":
            print(
                f"Manuscript already illustrated by session {previous['session_id']} "
                f"({previous.get('total_images_generated', 0)} images); use --new to start over."
            )
            return 0
        finished = asyncio.get_running_loop().create_future()
        if previous is not None and previous.get("status") != "cancelled":
            sid = previous["session_id"]
            state = await engine.load_state(sid)
            where = (
                f"chapter {state.current_chapter}"
                if state.current_chapter
                else (
                    f"chapter {state.last_completed_chapter + 1}"
                    if state.processed_chapters
                    else "the start"
                )
            )
            print(
                f"Resuming session {sid} from {where},"
                f" {state.last_work_checkpoint or 'not started'}"
                f" ({len(state.processed_chapters)}/"
                f"{state.total_chapters or len(manuscript.chapters)} chapters done)",
                flush=True,
            )
            _follow(engine, sid, finished, quiet=args.quiet, events_path=args.events_jsonl)
            await engine.resume_session(sid)
        else:
            style = {"art_style": args.style}
            if args.palette:
                style["color_palette"] = args.palette
            started = await engine.start_session(
                manuscript_id, style_config=style, max_emotional_moments=args.max_moments
            )
            sid = started["session_id"]
            print(
                f"Started session {sid}: '{manuscript.title}', {len(manuscript.chapters)} chapters",
                flush=True,
            )
            _follow(engine, sid, finished, quiet=args.quiet, events_path=args.events_jsonl)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(_pause(engine, sid)))
        status = await finished
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        print(f"\nSession {sid} {status}.", flush=True)
        if status == "paused":
            print("Run the same command again to resume.")
        return 0 if status in ("completed", "paused") else 1
    finally:
        await engine.stop()
        await asyncio.to_thread(handle.stop)


async def _pause(engine: Any, sid: str) -> None:
    if engine.supervisor is None:  # already shutting down
        return
    print("\nPausing at the next step boundary...", file=sys.stderr, flush=True)
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
            bar = "#" * done + "-" * (40 - done)
            print(
                f"\r[{bar}] {frame['progress']:3d}%  chapters {frame['chapters_processed']}/"
                f"{frame['total_chapters']}  images {frame['images_generated']}",
                end="",
                file=sys.stderr,
                flush=True,
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


# -- sessions ------------------------------------------------------------------------------


def _sessions_list(config: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_sessions_list_async(config, args))


async def _sessions_list_async(config: Config, args: argparse.Namespace) -> int:
    from storage.database import open_database, resolve_store

    handle = await asyncio.to_thread(open_database, config)
    try:
        store = await resolve_store(handle.store_factory(config)())
        try:
            documents = await store.list_sessions(limit=1000)
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(handle.stop)
    if args.json:
        print(json.dumps(documents, default=str, indent=2))
        return 0
    if not documents:
        print("No sessions.")
        return 0
    print(
        f"{'SESSION':36}  {'STATUS':11}  {'PROGRESS':>8}  {'CHAPTERS':>8}  {'IMAGES':>6}  STARTED"
    )
    for d in documents:
        chapters = f"{len(d.get('processed_chapters') or [])}/{d.get('total_chapters') or 0}"
        print(
            f"{d['session_id']:36}  {d.get('status', '?'):11}"
            f"  {d.get('progress_percent', 0):>7}%  {chapters:>8}"
            f"  {d.get('total_images_generated', 0):>6}  {str(d.get('started_at', ''))[:19]}"
        )
    return 0


def _with_engine(config: Config, work: Any) -> int:
    """Run ``await work(engine)`` with an engine whose actors run no session."""

    async def run() -> int:
        from actors.engine import Engine
        from storage.database import open_database

        handle = await asyncio.to_thread(open_database, config)
        engine = Engine(config, handle.store_factory(config))
        try:
            await engine.start()
            return int(await work(engine))
        finally:
            await engine.stop()
            await asyncio.to_thread(handle.stop)

    return asyncio.run(run())


def _sessions_dump(config: Config, args: argparse.Namespace) -> int:
    async def work(engine: Any) -> int:
        path = await engine.dump_session(args.session_id)
        if args.output is not None:
            import shutil

            shutil.copyfile(path, args.output)
            path = args.output
        print(path)
        return 0

    return _with_engine(config, work)


def _sessions_restore(config: Config, args: argparse.Namespace) -> int:
    async def work(engine: Any) -> int:
        sid = await engine.restore_bundle(args.bundle)
        state = await engine.load_state(sid)
        print(
            f"Restored session {sid}: {state.status}, checkpoint {state.last_sequence_number}, "
            f"{len(state.processed_chapters)}/{state.total_chapters} chapters done."
        )
        if state.status.value in ("paused", "failed", "interrupted"):
            print(
                f"Resume it with: curl -X POST http://{config.server.host}:{config.server.port}"
                f"/api/process/resume/{sid}"
            )
        return 0

    return _with_engine(config, work)


def _sessions_verify(config: Config, args: argparse.Namespace) -> int:
    async def work(engine: Any) -> int:
        report = await engine.verify()
        print(report.render())
        return 0 if report.ok else 1

    return _with_engine(config, work)
