"""What the HTTP server logs: an access log that never shows a token, and aiohttp's own
protocol log without tracebacks for requests its parser rejects."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

_TOKEN_IN_QUERY = re.compile(r"([?&;]token=)[^&;#\s\"]*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with the value of every ``token=`` query parameter replaced."""
    return _TOKEN_IN_QUERY.sub(r"\1" + REDACTED, text)


class RedactingAccessLogger(web.AccessLogger):
    """aiohttp's access log, with ``?token=`` values redacted from every field.

    WebSocket clients may authenticate with ``?token=``; the request line (``%r``) and
    the Referer would otherwise write the token into the log.
    """

    def _format_line(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> Iterable[tuple[str | tuple[str, str], str]]:
        return [
            (key, redact(value) if isinstance(value, str) else value)
            for key, value in super()._format_line(request, response, time)
        ]


class _ParserErrorsQuietly(logging.Filter):
    """A request aiohttp's parser rejects (bad request line, header, length) is the
    client's fault: one INFO line instead of an ERROR with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
            exc = record.exc_info[1]
            reason = (str(exc.message).splitlines() or [type(exc).__name__])[0][:200]
            record.args = (record.getMessage(), reason)
            record.msg = "%s: %s"
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def protocol_logger() -> logging.Logger:
    """The logger aiohttp's connection handler reports to (``web.http``)."""
    log = logging.getLogger("web.http")
    if not any(isinstance(f, _ParserErrorsQuietly) for f in log.filters):
        log.addFilter(_ParserErrorsQuietly())
    return log
