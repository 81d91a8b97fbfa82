"""Building providers from config, the latency and call-log knobs, and the recorder."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from config import ProvidersConfig
from errors import ConfigError, ProviderError
from pipeline.analysis import LexiconAnalyzer
from pipeline.images import LocalImageGenerator, image_filename
from pipeline.manuscripts import Chapter
from pipeline.prompts import TemplatePromptWriter
from pipeline.providers import (
    CallLog,
    Providers,
    RecordingProviders,
    SimulatedLatency,
    build_providers,
    read_call_log,
)
from pipeline.remote import OpenAIChatAnalyzer, OpenAIImageGenerator, OpenAIPromptWriter


def run_chapter(providers: Providers | RecordingProviders, chapter: Chapter, folder: Path) -> int:
    """Analyse, prompt and illustrate one chapter; return the number of images."""
    moments = providers.analyzer.analyze(chapter, 3)
    for scene, moment in enumerate(moments, start=1):
        prompt = providers.prompt_writer.write(moment, chapter, {"art_style": "ink"})
        destination = folder / image_filename(chapter.number, scene)
        providers.image_generator.generate(prompt, moment, destination)
    return len(moments)


# --------------------------------------------------------------------------- building


def test_default_config_builds_the_offline_providers_unwrapped() -> None:
    providers = build_providers(ProvidersConfig())

    assert isinstance(providers.analyzer, LexiconAnalyzer)
    assert isinstance(providers.prompt_writer, TemplatePromptWriter)
    assert isinstance(providers.image_generator, LocalImageGenerator)
    assert providers.image_generator.size == 256


def test_openai_config_builds_the_remote_providers() -> None:
    cfg = ProvidersConfig(
        analysis="openai", prompts="openai", images="openai", api_base="https://api.example/v1"
    )

    providers = build_providers(cfg)

    assert isinstance(providers.analyzer, OpenAIChatAnalyzer)
    assert isinstance(providers.prompt_writer, OpenAIPromptWriter)
    assert isinstance(providers.image_generator, OpenAIImageGenerator)
    assert providers.image_generator.size == "256x256"
    assert providers.analyzer.model == "gpt-4o-mini"


def test_unknown_provider_names_are_config_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        build_providers(ProvidersConfig(prompts="magic"))
    assert caught.value.details == {"key": "providers.prompts"}


def test_configured_providers_do_the_whole_pipeline(story_chapter: Chapter, tmp_path: Path) -> None:
    providers = build_providers(ProvidersConfig(image_size=32))

    images = run_chapter(providers, story_chapter, tmp_path)

    assert images == 3
    assert len(list(tmp_path.glob("chapter_3_scene_*.png"))) == 3


# --------------------------------------------------------------------------- latency


def test_latency_is_deterministic_and_within_its_bounds() -> None:
    latency = SimulatedLatency(50, 200)
    delays = [latency.delay_seconds("image", f"chapter_1_scene_{k}.png") for k in range(200)]

    assert all(0.050 <= d <= 0.200 for d in delays)
    assert len(set(delays)) > 20  # spread over the range, not one value
    assert delays == [
        latency.delay_seconds("image", f"chapter_1_scene_{k}.png") for k in range(200)
    ]


@pytest.mark.parametrize(("low", "high"), [(30, 0), (30, 10), (30, 30)])
def test_a_maximum_below_the_minimum_means_a_fixed_latency(low: int, high: int) -> None:
    latency = SimulatedLatency(low, high)

    assert {latency.delay_seconds("analyze", n) for n in range(20)} == {0.030}


def test_latency_wrapper_sleeps_before_the_call() -> None:
    events: list[str] = []
    latency = SimulatedLatency(2, 4, sleep=lambda seconds: events.append(f"sleep {seconds}"))

    def call() -> str:
        events.append("call")
        return "done"

    result = latency("prompt", "1:0", call)

    assert result == "done"
    assert events == [f"sleep {latency.delay_seconds('prompt', '1:0')}", "call"]


def test_configured_latency_slows_each_call_within_its_bounds(
    story_chapter: Chapter, tmp_path: Path
) -> None:
    cfg = ProvidersConfig(simulated_latency_ms=1, simulated_latency_max_ms=5, image_size=16)
    providers = build_providers(cfg)
    plain = build_providers(ProvidersConfig(image_size=16))
    moment = plain.analyzer.analyze(story_chapter, 1)[0]

    for _ in range(3):
        started = time.monotonic()
        providers.prompt_writer.write(moment, story_chapter, {})
        elapsed = time.monotonic() - started
        # a bound check, not a timing target: at least the minimum delay, and not stuck
        assert 0.001 <= elapsed < 1.0


# --------------------------------------------------------------------------- call log


def test_call_log_writes_one_parseable_line_per_call(
    story_chapter: Chapter, tmp_path: Path
) -> None:
    log = tmp_path / "logs" / "calls.jsonl"
    providers = build_providers(ProvidersConfig(call_log=str(log), image_size=16))

    images = run_chapter(providers, story_chapter, tmp_path)

    lines = log.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == 1 + 2 * images
    assert entries[0]["stage"] == "analyze" and entries[0]["key"] == 3
    assert [e["stage"] for e in entries[1:3]] == ["prompt", "image"]
    assert entries[1]["key"].startswith("3:")
    assert entries[2]["key"] == "chapter_3_scene_1.png"
    assert all(e["pid"] == os.getpid() and isinstance(e["time"], float) for e in entries)
    assert all(set(e) == {"stage", "key", "pid", "time"} for e in entries)


def test_call_log_lines_from_many_threads_never_interleave(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")

    def hammer(worker: int) -> None:
        for n in range(50):
            log("prompt", f"{worker}:{n}", lambda: None)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    entries = read_call_log(log.path)
    assert len(entries) == 400
    assert len(log.path.read_text(encoding="utf-8").splitlines()) == 400
    assert {e["key"] for e in entries} == {f"{w}:{n}" for w in range(8) for n in range(50)}


def test_call_log_records_only_completed_calls(tmp_path: Path) -> None:
    log = CallLog(tmp_path / "calls.jsonl")

    def fail() -> None:
        raise ProviderError("down")

    with pytest.raises(ProviderError):
        log("analyze", 1, fail)
    log("analyze", 2, lambda: None)

    assert [e["key"] for e in read_call_log(log.path)] == [2]


def test_reading_a_call_log_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text('{"stage": "analyze", "key": 1, "pid": 1, "time": 1.0}\n{"stage": "pro')

    assert read_call_log(path) == [{"stage": "analyze", "key": 1, "pid": 1, "time": 1.0}]


# --------------------------------------------------------------------------- recorder


def test_recorder_counts_calls_per_stage_and_key(story_chapter: Chapter, tmp_path: Path) -> None:
    recorder = RecordingProviders()

    images = run_chapter(recorder, story_chapter, tmp_path)
    run_chapter(recorder.providers, story_chapter, tmp_path)

    assert recorder.count("analyze") == 2
    assert recorder.count("analyze", 3) == 2
    assert recorder.count("analyze", "3") == 2
    assert recorder.count("image", "chapter_3_scene_1.png") == 2
    assert recorder.count("prompt") == 2 * images
    assert set(recorder.counts("image")) == {image_filename(3, k) for k in range(1, images + 1)}
    assert ("analyze", 3) in recorder.repeated()
    assert recorder.calls()[0] == ("analyze", 3)


def test_recorder_injects_failures_that_count_as_attempts_only(
    story_chapter: Chapter, tmp_path: Path
) -> None:
    recorder = RecordingProviders(fail_on=lambda stage, key: stage == "image")

    with pytest.raises(ProviderError, match="injected failure of image chapter_3_scene_1.png"):
        run_chapter(recorder, story_chapter, tmp_path)

    assert recorder.attempts("image") == 1
    assert recorder.count("image") == 0
    assert list(tmp_path.iterdir()) == []

    recorder.fail_on = None
    run_chapter(recorder, story_chapter, tmp_path)
    assert recorder.count("image", "chapter_3_scene_1.png") == 1


def test_recorder_calls_the_before_call_hook_first(story_chapter: Chapter) -> None:
    seen: list[tuple[str, object]] = []
    recorder = RecordingProviders(before_call=lambda stage, key: seen.append((stage, key)))

    recorder.analyzer.analyze(story_chapter, 2)

    assert seen == [("analyze", 3)]


def test_recorder_counts_correctly_from_many_threads() -> None:
    recorder = RecordingProviders()
    chapters = [Chapter(n, f"c{n}", "She was happy.") for n in range(1, 5)]

    def work() -> None:
        for _ in range(25):
            for chapter in chapters:
                recorder.analyzer.analyze(chapter, 1)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert recorder.counts("analyze") == {1: 150, 2: 150, 3: 150, 4: 150}
    assert len(recorder.calls()) == 600

    recorder.reset()
    assert recorder.count("analyze") == 0 and recorder.calls() == []
