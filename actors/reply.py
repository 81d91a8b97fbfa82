"""Replies from actor threads to waiting callers, without blocking the event loop.

A :class:`Reply` travels inside a message; the actor completes it from its own thread.
For an asyncio caller it resolves an ``asyncio.Future`` through
``loop.call_soon_threadsafe`` (never a pykka future awaited on the loop, whose
``__await__`` blocks); for a thread caller it resolves a ``concurrent.futures.Future``.
This is the one place where actor threads cross into asyncio for replies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any

import pykka


class Reply:
    """A one-shot, thread-safe answer channel."""

    __slots__ = ("_loop", "_future")

    def __init__(
        self,
        future: asyncio.Future[Any] | concurrent.futures.Future[Any],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._future = future
        self._loop = loop

    @classmethod
    def for_loop(cls) -> Reply:
        """A reply an async caller awaits with :meth:`wait` (call on the loop)."""
        loop = asyncio.get_running_loop()
        return cls(loop.create_future(), loop)

    @classmethod
    def for_thread(cls) -> Reply:
        """A reply a plain thread waits for with :meth:`result`."""
        return cls(concurrent.futures.Future())

    def set_result(self, value: Any = None) -> None:
        """Complete with a value (from any thread)."""
        if self._loop is None:
            if not self._future.done():
                self._future.set_result(value)
            return
        self._loop.call_soon_threadsafe(_resolve, self._future, value, None)

    def set_exception(self, exc: BaseException) -> None:
        """Complete with an error (from any thread)."""
        if self._loop is None:
            if not self._future.done():
                self._future.set_exception(exc)
            return
        self._loop.call_soon_threadsafe(_resolve, self._future, None, exc)

    async def wait(self, timeout: float | None = None) -> Any:
        """Await the answer on the event loop."""
        assert isinstance(self._future, asyncio.Future), "wait() is for loop replies"
        return await asyncio.wait_for(asyncio.shield(self._future), timeout)

    def result(self, timeout: float | None = None) -> Any:
        """Block a (non-loop) thread until the answer arrives."""
        assert isinstance(self._future, concurrent.futures.Future), "result() is for thread replies"
        return self._future.result(timeout)


def tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    """Tell from a timer or probe thread; the actor may have stopped meanwhile."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


def _resolve(
    future: asyncio.Future[Any] | concurrent.futures.Future[Any],
    value: Any,
    exc: BaseException | None,
) -> None:
    if future.done():  # the caller gave up (timeout, cancelled request)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
