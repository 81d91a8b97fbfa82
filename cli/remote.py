"""Commands that drive a running server over its REST API: ``manuscripts list`` and
``sessions show|pause|resume|cancel|delete ID``."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from cli.client import ApiClient, add_server_options, api_client, segment
from config import Config


def register_manuscripts(commands: Any) -> None:
    """``illustrator manuscripts ...``."""
    manuscripts = commands.add_parser(
        "manuscripts", help="manuscripts stored by the running server"
    )
    sub = manuscripts.add_subparsers(dest="manuscripts_command", required=True)
    listing = sub.add_parser(
        "list", help="the stored manuscripts, newest first, one page (asks the server)"
    )
    listing.add_argument(
        "--limit", type=int, default=50, help="manuscripts per page, 1-500 (default: 50)"
    )
    listing.add_argument(
        "--offset", type=int, default=0, help="skip this many, newest first (default: 0)"
    )
    listing.add_argument("--json", action="store_true", help="print the JSON reply (default: off)")
    add_server_options(listing)
    listing.set_defaults(handler=_manuscripts_list)


def register_session_controls(sessions: Any) -> None:
    """``illustrator sessions show|pause|resume|cancel|delete ID``."""
    actions = {
        "show": "one session's status and record (asks the server)",
        "pause": "pause a running session at its next step boundary (asks the server)",
        "resume": "resume a paused, failed or interrupted session (asks the server)",
        "cancel": "cancel a session; it can never resume (asks the server)",
        "delete": "stop a session and delete its records and files (asks the server)",
    }
    for action, text in actions.items():
        command = sessions.add_parser(action, help=text)
        command.add_argument("session_id", help="the session's id (a UUID)")
        if action == "show":
            command.add_argument(
                "--json", action="store_true", help="print the JSON reply (default: off)"
            )
        add_server_options(command)
        command.set_defaults(handler=_session_control, action=action)


def _manuscripts_list(config: Config, args: argparse.Namespace) -> int:
    async def run() -> int:
        async with api_client(config, args) as api:
            data = await api.call(
                "GET", f"/api/manuscripts?limit={args.limit}&offset={args.offset}"
            )
        if args.json:
            print(json.dumps(data, indent=2))
            return 0
        items = data.get("manuscripts") or []
        if not items:
            print(f"No manuscripts (total {data.get('total', 0)}).")
            return 0
        print(f"{'MANUSCRIPT':36}  {'CHAPTERS':>8}  {'CREATED':19}  TITLE (AUTHOR)")
        for m in items:
            print(
                f"{m.get('manuscript_id', '?'):36}  {m.get('total_chapters', 0):>8}"
                f"  {str(m.get('created_at') or '')[:19]:19}  {m.get('title', '')}"
                f" ({m.get('author') or 'unknown'})"
            )
        first = args.offset + 1
        print(f"{first}-{args.offset + len(items)} of {data.get('total', len(items))}", end="")
        if data.get("next_offset") is not None:
            print(f"; next page: --offset {data['next_offset']}", end="")
        print()
        return 0

    return asyncio.run(run())


def _session_control(config: Config, args: argparse.Namespace) -> int:
    async def run() -> int:
        async with api_client(config, args) as api:
            return await _ACTIONS[args.action](api, args)

    return asyncio.run(run())


async def _show(api: ApiClient, args: argparse.Namespace) -> int:
    data = await api.call("GET", f"/api/sessions/{segment(args.session_id)}")
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    view = data.get("status") or {}
    live = " (live)" if data.get("live") else ""
    print(f"Session {data.get('session_id')}: {view.get('status')}{live}")
    checkpoint = view.get("last_completed_step") or "none"
    rows = [
        ("manuscript", view.get("manuscript_id")),
        ("progress", f"{view.get('progress', 0)}%"),
        ("chapters", f"{view.get('chapters_processed', 0)}/{view.get('total_chapters', 0)}"),
        ("images", view.get("images_generated", 0)),
        ("last checkpoint", f"{view.get('last_sequence_number', 0)} ({checkpoint})"),
        ("last event", view.get("last_event_seq", 0)),
        ("started", view.get("started_at")),
    ]
    if view.get("error_message"):
        rows.append(("error", view["error_message"]))
    for name, value in rows:
        print(f"  {name + ':':17} {value}")
    return 0


async def _post(api: ApiClient, path: str) -> int:
    data = await api.call("POST", path)
    print(data.get("message") or json.dumps(data))
    return 0


async def _pause(api: ApiClient, args: argparse.Namespace) -> int:
    return await _post(api, f"/api/process/{segment(args.session_id)}/pause")


async def _resume(api: ApiClient, args: argparse.Namespace) -> int:
    data = await api.call("POST", f"/api/process/resume/{segment(args.session_id)}")
    info = data.get("resume_info") or {}
    print(
        f"{data.get('message')}: session {data.get('session_id')} from"
        f" {info.get('checkpoint_type') or 'the start'}, {info.get('progress_percent', 0)}%"
        f" ({info.get('last_completed_chapter', 0)}/{info.get('total_chapters', 0)} chapters)"
    )
    return 0


async def _cancel(api: ApiClient, args: argparse.Namespace) -> int:
    return await _post(api, f"/api/process/{segment(args.session_id)}/cancel")


async def _delete(api: ApiClient, args: argparse.Namespace) -> int:
    data = await api.call("DELETE", f"/api/sessions/{segment(args.session_id)}")
    print(data.get("message") or json.dumps(data))
    return 0


_ACTIONS = {
    "show": _show,
    "pause": _pause,
    "resume": _resume,
    "cancel": _cancel,
    "delete": _delete,
}
