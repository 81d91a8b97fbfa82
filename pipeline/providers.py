"""The three pipeline stages bundled as ``Providers``, built from configuration.

``build_providers`` picks the local or OpenAI-compatible implementation of each stage and
wraps them with the test knobs of ``[providers]``: a simulated latency per call and a
call log shared by processes. ``RecordingProviders`` counts calls and injects failures
for tests of every package.

Every call has a stage and a key naming the work it does, the same in the call log, the
recorder and the ``fail_on`` hook: ``"analyze"`` and the chapter number (an int),
``"prompt"`` and ``"{chapter}:{start_position}"``, ``"image"`` and the image file name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from config import ProvidersConfig
from errors import ConfigError, ProviderError
from pipeline.analysis import EmotionalMoment, EmotionAnalyzer, LexiconAnalyzer
from pipeline.images import ImageGenerator, LocalImageGenerator
from pipeline.manuscripts import Chapter
from pipeline.prompts import IllustrationPrompt, PromptWriter, TemplatePromptWriter
from pipeline.remote import OpenAIChatAnalyzer, OpenAIImageGenerator, OpenAIPromptWriter

logger = logging.getLogger(__name__)

T = TypeVar("T")
CallKey = int | str
Around = Callable[[str, CallKey, Callable[[], Any]], Any]
"""A wrapper's hook: ``around(stage, key, call)`` runs ``call()`` and returns its result."""

STAGE_ANALYZE = "analyze"
STAGE_PROMPT = "prompt"
STAGE_IMAGE = "image"
STAGES = (STAGE_ANALYZE, STAGE_PROMPT, STAGE_IMAGE)


@dataclass(frozen=True)
class Providers:
    """One implementation of each pipeline stage."""

    analyzer: EmotionAnalyzer
    prompt_writer: PromptWriter
    image_generator: ImageGenerator


def local_providers(image_size: int = 256) -> Providers:
    """The offline providers: lexicon analysis, template prompts, Pillow images."""
    return Providers(LexiconAnalyzer(), TemplatePromptWriter(), LocalImageGenerator(image_size))


def build_providers(cfg: ProvidersConfig) -> Providers:
    """The providers ``cfg`` asks for, wrapped with its latency and call-log knobs.

    Raises:
        ConfigError: a stage names an unknown provider, or ``api_base`` is not a URL.
    """
    remote: dict[str, Any] = {
        "api_base": cfg.api_base,
        "api_key": cfg.api_key,
        "timeout": cfg.timeout_seconds,
        "retries": cfg.retries,
    }
    for key in ("analysis", "prompts", "images"):
        if getattr(cfg, key) not in ("local", "openai"):
            raise ConfigError(
                f"providers.{key} must be 'local' or 'openai', got {getattr(cfg, key)!r}",
                details={"key": f"providers.{key}"},
            )
    providers = Providers(
        analyzer=LexiconAnalyzer()
        if cfg.analysis == "local"
        else OpenAIChatAnalyzer(model=cfg.chat_model, **remote),
        prompt_writer=TemplatePromptWriter()
        if cfg.prompts == "local"
        else OpenAIPromptWriter(model=cfg.chat_model, **remote),
        image_generator=LocalImageGenerator(cfg.image_size)
        if cfg.images == "local"
        else OpenAIImageGenerator(model=cfg.image_model, size=cfg.image_size, **remote),
    )
    if cfg.simulated_latency_ms > 0:
        latency = SimulatedLatency(cfg.simulated_latency_ms, cfg.simulated_latency_max_ms)
        providers = wrap_providers(providers, latency)
    if cfg.call_log:
        providers = wrap_providers(providers, CallLog(cfg.call_log))
    logger.info(
        "providers: analysis=%s prompts=%s images=%s latency=%s..%sms call_log=%s",
        cfg.analysis, cfg.prompts, cfg.images, cfg.simulated_latency_ms,
        max(cfg.simulated_latency_ms, cfg.simulated_latency_max_ms), cfg.call_log or "-",
    )  # fmt: skip
    return providers


# --------------------------------------------------------------------------- wrapping


class _AnalyzerHook:
    def __init__(self, inner: EmotionAnalyzer, around: Around) -> None:
        self.inner, self._around = inner, around

    def analyze(self, chapter: Chapter, max_moments: int) -> list[EmotionalMoment]:
        result: list[EmotionalMoment] = self._around(
            STAGE_ANALYZE, chapter.number, lambda: self.inner.analyze(chapter, max_moments)
        )
        return result


class _PromptHook:
    def __init__(self, inner: PromptWriter, around: Around) -> None:
        self.inner, self._around = inner, around

    def write(
        self, moment: EmotionalMoment, chapter: Chapter, style_config: Mapping[str, Any]
    ) -> IllustrationPrompt:
        key = f"{chapter.number}:{moment.start_position}"
        result: IllustrationPrompt = self._around(
            STAGE_PROMPT, key, lambda: self.inner.write(moment, chapter, style_config)
        )
        return result


class _ImageHook:
    def __init__(self, inner: ImageGenerator, around: Around) -> None:
        self.inner, self._around = inner, around

    def generate(
        self, prompt: IllustrationPrompt, moment: EmotionalMoment, destination: Path
    ) -> None:
        self._around(
            STAGE_IMAGE,
            Path(destination).name,
            lambda: self.inner.generate(prompt, moment, destination),
        )


def wrap_providers(providers: Providers, around: Around) -> Providers:
    """``providers`` with every call passed through ``around(stage, key, call)``."""
    return Providers(
        analyzer=_AnalyzerHook(providers.analyzer, around),
        prompt_writer=_PromptHook(providers.prompt_writer, around),
        image_generator=_ImageHook(providers.image_generator, around),
    )


class SimulatedLatency:
    """Adds a deterministic delay to each call, as a slow remote provider would.

    The delay lies in ``[min_ms, max(min_ms, max_ms)]`` and is chosen by hashing the
    call's stage and key, so the same work always takes the same time.
    """

    def __init__(
        self, min_ms: int, max_ms: int = 0, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.min_ms = max(0, int(min_ms))
        self.max_ms = max(self.min_ms, int(max_ms))
        self._sleep = sleep

    def delay_seconds(self, stage: str, key: CallKey) -> float:
        """The delay of the call ``(stage, key)``."""
        span = self.max_ms - self.min_ms
        digest = hashlib.sha256(f"{stage}:{key}".encode()).digest()
        extra = int.from_bytes(digest[:8], "big") % (span + 1) if span else 0
        return (self.min_ms + extra) / 1000.0

    def __call__(self, stage: str, key: CallKey, call: Callable[[], T]) -> T:
        self._sleep(self.delay_seconds(stage, key))
        return call()


class CallLog:
    """Appends one JSON line per completed call to a file several processes may share.

    A line is ``{"stage", "key", "pid", "time"}``, written after the call returned (a
    failed call writes nothing), with one ``os.write`` on an ``O_APPEND`` descriptor so
    lines from concurrent writers never interleave.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, stage: str, key: CallKey) -> None:
        """Append the line of one call; an I/O error is logged, never raised."""
        line = json.dumps({"stage": stage, "key": key, "pid": os.getpid(), "time": time.time()})
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode("utf-8"))
            finally:
                os.close(fd)
        except OSError:
            # The call itself succeeded (and was paid for): failing it now would redo it.
            logger.exception("could not append to the provider call log %s", self.path)

    def __call__(self, stage: str, key: CallKey, call: Callable[[], T]) -> T:
        result = call()
        self.record(stage, key)
        return result


def read_call_log(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a call log, skipping a torn last line."""
    entries = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


# --------------------------------------------------------------------------- testing


class RecordingProviders:
    """Test helper: providers that count their calls and can be told to fail.

    Pass ``recording.providers`` (or the recorder itself: it has the same three
    attributes) wherever a ``Providers`` is expected. Counting is thread-safe.

    Args:
        inner: The providers doing the work (default: local ones with 64 px images).
        fail_on: ``fail_on(stage, key)`` returning True makes that call raise
            ``ProviderError`` before any work; may be replaced at any time.
        before_call: Called as ``before_call(stage, key)`` before each call, e.g. to
            block on an event until the test lets the call proceed.
    """

    def __init__(
        self,
        inner: Providers | None = None,
        *,
        fail_on: Callable[[str, CallKey], bool] | None = None,
        before_call: Callable[[str, CallKey], None] | None = None,
    ) -> None:
        self.inner = inner if inner is not None else local_providers(64)
        self.fail_on = fail_on
        self.before_call = before_call
        self._lock = threading.Lock()
        self._attempts: Counter[tuple[str, CallKey]] = Counter()
        self._completed: Counter[tuple[str, CallKey]] = Counter()
        self._log: list[tuple[str, CallKey]] = []
        self.providers = wrap_providers(self.inner, self._around)
        self.analyzer = self.providers.analyzer
        self.prompt_writer = self.providers.prompt_writer
        self.image_generator = self.providers.image_generator

    def _around(self, stage: str, key: CallKey, call: Callable[[], T]) -> T:
        with self._lock:
            self._attempts[(stage, key)] += 1
        if self.before_call is not None:
            self.before_call(stage, key)
        fail_on = self.fail_on
        if fail_on is not None and fail_on(stage, key):
            raise ProviderError(
                f"injected failure of {stage} {key}", details={"stage": stage, "key": key}
            )
        result = call()
        with self._lock:
            self._completed[(stage, key)] += 1
            self._log.append((stage, key))
        return result

    def count(self, stage: str, key: CallKey | None = None) -> int:
        """Completed calls of ``stage`` (for ``key``, or for every key)."""
        return self._sum(self._completed, stage, key)

    def attempts(self, stage: str, key: CallKey | None = None) -> int:
        """Calls of ``stage`` started, including failed ones."""
        return self._sum(self._attempts, stage, key)

    def counts(self, stage: str) -> dict[CallKey, int]:
        """Completed calls of ``stage`` per key."""
        with self._lock:
            return {k: n for (s, k), n in self._completed.items() if s == stage}

    def calls(self) -> list[tuple[str, CallKey]]:
        """Every completed call as ``(stage, key)``, in completion order."""
        with self._lock:
            return list(self._log)

    def repeated(self) -> dict[tuple[str, CallKey], int]:
        """Calls that completed more than once: work done twice."""
        with self._lock:
            return {call: n for call, n in self._completed.items() if n > 1}

    def reset(self) -> None:
        """Forget every call counted so far."""
        with self._lock:
            self._attempts.clear()
            self._completed.clear()
            self._log.clear()

    def _sum(self, counter: Counter[tuple[str, CallKey]], stage: str, key: CallKey | None) -> int:
        if stage == STAGE_ANALYZE and isinstance(key, str) and key.isdigit():
            key = int(key)
        with self._lock:
            if key is not None:
                return counter[(stage, key)]
            return sum(n for (s, _), n in counter.items() if s == stage)
