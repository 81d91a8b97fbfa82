"""The terminal: one progress bar at a time, with log lines and messages kept off it.

A progress bar is redrawn in place (``\\r``) on stderr. Anything else written to stderr
while it is shown (log records, messages) goes through :data:`TERMINAL`: on a terminal the
bar's line is cleared, the line written, and the bar drawn again below it; into a pipe or
a file the bar's line is ended first, so every log line starts a line of its own.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

CLEAR_LINE = "\r\x1b[K"


class Terminal:
    """stderr, shared by a progress bar and everything else written there."""

    def __init__(self) -> None:
        self.bar_text = ""
        """The bar as last drawn ("" when none is shown)."""
        self._bar_open = False
        """The bar is the unfinished last line of stderr."""
        self._lock = threading.Lock()
        """Log records come from every thread (actors, the driver), the bar from the loop."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr  # looked up at each write: tests and runners replace it

    def _is_tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def bar(self, text: str) -> None:
        """Draw (or redraw) the progress bar."""
        with self._lock:
            self.bar_text = text
            prefix = CLEAR_LINE if self._is_tty() else "\r"
            self.stream.write(prefix + text)
            self.stream.flush()
            self._bar_open = True

    def line(self, text: str) -> None:
        """Write one line to stderr above the bar (the bar is drawn again under it)."""
        with self._lock:
            stream = self.stream
            if self._bar_open:
                stream.write(CLEAR_LINE if self._is_tty() else "\n")
            stream.write(text + "\n")
            self._bar_open = False
            if self.bar_text and self._is_tty():
                stream.write(self.bar_text)
                self._bar_open = True
            stream.flush()

    def end_bar(self) -> None:
        """The bar is done: end its line and stop redrawing it."""
        with self._lock:
            if self._bar_open:
                self.stream.write("\n")
                self.stream.flush()
            self.bar_text = ""
            self._bar_open = False


TERMINAL = Terminal()


class TerminalLogHandler(logging.Handler):
    """Logging to stderr through :data:`TERMINAL`, so a log line never breaks the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            TERMINAL.line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never raise (logging.Handler's rule)
            self.handleError(record)


def configure_logging(verbosity: int, *, default: int = logging.WARNING) -> None:
    """Log to stderr through the terminal: at ``default`` level, one step more verbose
    (INFO, or DEBUG when the default is INFO already) with ``-v``, DEBUG with ``-vv``."""
    levels = [default, logging.INFO if default > logging.INFO else logging.DEBUG, logging.DEBUG]
    handler = TerminalLogHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(levels[min(verbosity, 2)])
