"""``illustrator watch ID``: print a session's WebSocket frames as JSON lines, up to its
last event.

A session announces its end (``complete``, ``error``, a final ``status``) before its last
events: the progress of its final checkpoint, the error's log line. So the end of the
stream is not the announcement but the session's last event number, which the snapshot
frame of a stopped session carries: after an announcement the watcher connects again
with ``?after=`` the last event it printed, reads the snapshot and prints the rest (each
event once). The exit code is 1 when the session failed (an ``error`` frame), or the
server refused the watch (its JSON reason is shown) or could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

import aiohttp

from cli.client import ApiClient, ServerError, add_server_options, api_client, error_text, segment
from config import Config
from domain import STOPPED_STATUSES

FINAL_STATUSES = frozenset(STOPPED_STATUSES)
RECONNECTS = 20
"""Connections in a row that bring nothing new before the watcher gives up."""
RECONNECT_PAUSE = 0.25
"""Seconds between such connections (a stopped session's record is written at once)."""


def register(commands: Any) -> None:
    """``illustrator watch``."""
    watch = commands.add_parser(
        "watch", help="print a session's WebSocket events as JSON lines (asks the server)"
    )
    watch.add_argument("session_id", help="the session's id (a UUID)")
    watch.add_argument(
        "--after",
        type=int,
        default=None,
        metavar="N",
        help="first replay the stored events after event N, then follow (default: no replay,"
        " only the snapshot and live events)",
    )
    add_server_options(watch)
    watch.set_defaults(handler=_watch)


@dataclass
class _Follow:
    """What the watcher has printed and learnt so far."""

    printed: int | None
    """The last event number printed (or the ``--after`` asked for)."""
    printed_events: bool = False
    """Events were printed (``printed`` is not just the ``--after`` asked for)."""
    failed: bool = False
    target: int | None = None
    """The stopped session's last event number, once a snapshot told it."""
    snapshot_shown: bool = False

    def done(self) -> bool:
        """Everything up to the session's last event is printed."""
        if self.target is None or self.printed is None:
            return False
        return self.printed >= self.target


def _watch(config: Config, args: argparse.Namespace) -> int:
    if args.after is not None and args.after < 0:
        print("illustrator: --after must be 0 or more", file=sys.stderr)
        return 2

    async def run() -> int:
        async with api_client(config, args) as api:
            return await follow(api, args.session_id, args.after)

    return asyncio.run(run())


async def follow(api: ApiClient, sid: str, after: int | None) -> int:
    """Print the frames of session ``sid`` up to its last event; the exit code."""
    state = _Follow(printed=after)
    idle = 0
    while idle < RECONNECTS:
        before = state.printed
        params = {} if state.printed is None else {"after": str(state.printed)}
        try:
            socket = await api.http.ws_connect(
                f"{api.base}/ws/processing/{segment(sid)}", params=params
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ServerError(await _refusal(api, sid, params, exc)) from exc
        except aiohttp.ClientError as exc:
            if state.snapshot_shown:
                raise ServerError(
                    f"the server at {api.base} went away before the last events of {sid}"
                    f" were read (printed up to {state.printed}): {exc}"
                ) from exc
            raise api.unreachable(exc) from exc
        async with socket:
            await _read(socket, state)
        if state.done() or (state.target is not None and state.printed is None):
            return 1 if state.failed else 0
        idle = 0 if state.printed != before else idle + 1
        await asyncio.sleep(RECONNECT_PAUSE if idle else 0)
    raise ServerError(
        f"session {sid}: the server announced its end but not its last event"
        f" (printed up to {state.printed})"
    )


async def _read(socket: aiohttp.ClientWebSocketResponse, state: _Follow) -> None:
    """Print one connection's frames; returns when it is done or worth reconnecting."""
    async for message in socket:
        if message.type != aiohttp.WSMsgType.TEXT:
            return
        frame = json.loads(message.data)
        kind, seq = frame.get("type"), frame.get("event_seq")
        if kind == "snapshot":
            if not state.snapshot_shown:
                print(message.data, flush=True)
                state.snapshot_shown = True
            last = int(frame.get("last_event_seq") or 0)
            if frame.get("status") in FINAL_STATUSES:
                state.failed = state.failed or frame.get("status") == "failed"
                # A stopped session: its record holds its last event number, unless
                # it is still being written (then the next connection tells). Asked
                # to start beyond it, there is nothing to print.
                if state.printed is None or last >= state.printed or not state.printed_events:
                    state.target = last
                if state.done() or state.printed is None or state.target is None:
                    return  # done, nothing asked to replay, or ask again in a moment
            elif state.printed is None:
                state.printed = last  # live: what follows is new
            continue
        if isinstance(seq, int):
            if state.printed is not None and seq <= state.printed:
                continue  # already printed (a replay overlapping the live stream)
            state.printed = seq
            state.printed_events = True
        print(message.data, flush=True)
        if kind == "error":
            state.failed = True
            if seq is None:  # not an event: the server cannot replay (database down)
                state.target = state.printed if state.printed is not None else 0
                return
        if state.done() or kind == "resync":
            return  # resync: too far behind; connect again from the last event printed
        if state.target is None and (
            kind in ("complete", "error")
            or (kind == "status" and frame.get("status") in FINAL_STATUSES)
        ):
            return  # connect again: the snapshot tells where the session's events end


async def _refusal(
    api: ApiClient, sid: str, params: dict[str, str], exc: aiohttp.WSServerHandshakeError
) -> str:
    """The server's JSON reason for refusing the WebSocket (asked again without upgrade)."""
    try:
        async with api.http.get(
            f"{api.base}/ws/processing/{segment(sid)}", params=params
        ) as response:
            if response.status == exc.status:
                return error_text(response.status, await response.read())
    except aiohttp.ClientError:
        pass
    return f"server answered {exc.status}: {exc.message}"
