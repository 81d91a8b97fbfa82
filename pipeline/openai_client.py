"""A small client for OpenAI-compatible HTTP APIs: JSON POSTs with timeout and retries.

Standard library only (``urllib.request``), synchronous: providers run on actor threads.
Connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff
(honouring a short ``Retry-After``); other 4xx fail at once. When the attempts are used
up the caller gets a ``ProviderError``.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from errors import ConfigError, ProviderError

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_USER_AGENT = "illustrator-engine/0.1"


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIClient:
    """POSTs JSON to an OpenAI-compatible API.

    Args:
        api_base: Base URL, e.g. ``https://api.openai.com/v1``.
        api_key: Bearer token; empty sends no ``Authorization`` header (local servers).
        timeout: Seconds allowed for connecting and for each read.
        retries: Extra attempts after the first one fails in a retryable way.
        backoff_seconds: First delay between attempts; doubles each time.
        max_backoff_seconds: Cap on any single delay.
        sleep: How to wait between attempts (tests pass a recorder).

    Raises:
        ConfigError: ``api_base`` is not an http(s) URL.
    """

    def __init__(
        self,
        api_base: str,
        api_key: str = "",
        *,
        timeout: float = 60.0,
        retries: int = 2,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
            raise ConfigError(
                f"providers.api_base must be an http(s) URL, got {api_base!r}",
                details={"key": "providers.api_base"},
            )
        self.api_base = api_base.rstrip("/")
        self.api_key = api_key
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff_seconds = max(0.0, float(backoff_seconds))
        self.max_backoff_seconds = max(0.0, float(max_backoff_seconds))
        self._sleep = sleep

    def post_json(
        self, path: str, payload: Mapping[str, Any], *, max_bytes: int = MAX_RESPONSE_BYTES
    ) -> dict[str, Any]:
        """POST ``payload`` to ``{api_base}{path}`` and return the decoded JSON object.

        Raises:
            ProviderError: a non-retryable error, an invalid response, or retryable
                errors on every attempt.
        """
        url = f"{self.api_base}/{path.lstrip('/')}"
        body = json.dumps(payload).encode("utf-8")
        attempts = self.retries + 1
        last: _RetryableError | None = None
        for attempt in range(attempts):
            try:
                return self._post_once(url, body, max_bytes)
            except _RetryableError as exc:
                last = exc
                if attempt + 1 >= attempts:
                    break
                delay = min(self.max_backoff_seconds, self.backoff_seconds * 2**attempt)
                if exc.retry_after is not None:
                    delay = min(self.max_backoff_seconds, max(delay, exc.retry_after))
                logger.warning(
                    "POST %s failed (%s); attempt %d of %d, retrying in %.2fs",
                    url, exc, attempt + 1, attempts, delay,
                )  # fmt: skip
                self._sleep(delay)
        raise ProviderError(
            f"POST {url} failed after {attempts} attempt(s): {last}",
            details={"url": url, "attempts": attempts},
        ) from last

    def chat(self, payload: Mapping[str, Any]) -> str:
        """POST a chat completion and return the assistant message's text.

        Raises:
            ProviderError: as ``post_json``, or the reply has no message text.
        """
        data = self.post_json("/chat/completions", payload)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderError("chat completion reply has no choices[0].message") from exc
        if not isinstance(content, str):
            raise ProviderError("chat completion message content is not text")
        return content

    def _post_once(self, url: str, body: bytes, max_bytes: int) -> dict[str, Any]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read(max_bytes + 1)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            # connection refused or reset, DNS failure, timeout, truncated response
            reason = getattr(exc, "reason", exc)
            raise _RetryableError(f"{type(exc).__name__}: {reason}") from exc
        if len(raw) > max_bytes:
            raise ProviderError(f"response from {url} exceeds {max_bytes} bytes")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProviderError(f"response from {url} is not JSON") from exc
        if not isinstance(data, dict):
            raise ProviderError(f"response from {url} is not a JSON object")
        return data


def _http_error(exc: urllib.error.HTTPError) -> Exception:
    try:
        detail = exc.read(2000).decode("utf-8", "replace")
    except OSError:
        detail = ""
    finally:
        exc.close()
    message = f"HTTP {exc.code}: {_error_message(detail) or exc.reason}"
    if exc.code in RETRYABLE_STATUSES:
        return _RetryableError(message, _retry_after(exc.headers.get("Retry-After")))
    return ProviderError(message, details={"status": exc.code})


def _error_message(detail: str) -> str:
    """The ``error.message`` of an OpenAI error body, else the body's start."""
    try:
        data = json.loads(detail)
        message = data["error"]["message"] if isinstance(data["error"], dict) else data["error"]
        return str(message)[:300]
    except (ValueError, KeyError, TypeError):
        return " ".join(detail.split())[:300]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use our own backoff
