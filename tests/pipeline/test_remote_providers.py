"""OpenAI-compatible providers against a fake server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from errors import ConfigError, ProviderError
from pipeline.analysis import TONES, EmotionalMoment
from pipeline.manuscripts import Chapter
from pipeline.openai_client import OpenAIClient
from pipeline.prompts import IllustrationPrompt, seed_for
from pipeline.remote import (
    OpenAIChatAnalyzer,
    OpenAIImageGenerator,
    OpenAIPromptWriter,
    locate_excerpt,
)

FAST = {"backoff_seconds": 0.001}


def analyzer(server: Any, retries: int = 2, timeout: float = 5.0) -> OpenAIChatAnalyzer:
    return OpenAIChatAnalyzer(server.base_url, "sk-test", "gpt-test", timeout, retries, **FAST)


def moments_reply(*items: dict[str, object]) -> str:
    return json.dumps({"moments": list(items)})


# --------------------------------------------------------------------------- analysis


def test_analyzer_turns_the_model_reply_into_validated_moments(
    fake_openai: Any, story_chapter: Chapter
) -> None:
    fake_openai.reply_chat(
        moments_reply(
            {
                "text_excerpt": "The monster lunged from the darkness",
                "emotional_tones": ["fear", "dread", "TENSION"],
                "intensity_score": 3,
                "characters_present": ["Anna"],
                "setting_description": "a dark castle",
                "narrative_context": "The monster attacks.",
            },
            {
                # quoted loosely: other case, spacing and quote marks
                "text_excerpt": "wait, anna said.   mr. darcy appeared",
                "emotional_tones": "anticipation, nonsense",
                "intensity_score": "0.4",
            },
            {"text_excerpt": "A sentence that is nowhere in the chapter.", "intensity_score": 1},
        )
    )

    moments = analyzer(fake_openai).analyze(story_chapter, 5)

    assert len(moments) == 2
    darcy, monster = moments
    assert monster.emotional_tones == ("fear", "tension")
    assert monster.intensity_score == 1.0
    assert monster.characters_present == ("Anna",)
    assert monster.setting_description == "a dark castle"
    assert darcy.emotional_tones == ("anticipation",)
    assert darcy.intensity_score == 0.4
    assert darcy.text_excerpt.startswith("Wait")
    for moment in moments:
        content = story_chapter.content
        assert content[moment.start_position : moment.end_position] == moment.text_excerpt
        assert set(moment.emotional_tones) <= set(TONES)
    request = fake_openai.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-test"
    assert request.json["model"] == "gpt-test"
    assert "The monster lunged" in request.json["messages"][1]["content"]


def test_analyzer_keeps_at_most_max_moments_most_intense_first(
    fake_openai: Any, story_chapter: Chapter
) -> None:
    fake_openai.reply_chat(
        moments_reply(
            {"text_excerpt": "The morning was quiet in the village.", "intensity_score": 0.1},
            {"text_excerpt": "It was a triumph.", "intensity_score": 0.9},
            {"text_excerpt": "She was not afraid.", "intensity_score": 0.5},
        )
    )

    moments = analyzer(fake_openai).analyze(story_chapter, 2)

    assert [m.text_excerpt for m in moments] == ["She was not afraid.", "It was a triumph."]


def test_analyzer_accepts_a_fenced_bare_list(fake_openai: Any, story_chapter: Chapter) -> None:
    fake_openai.reply_chat(
        '```json\n[{"text_excerpt": "It was a triumph.", "emotional_tones": ["triumph"]}]\n```'
    )

    (moment,) = analyzer(fake_openai).analyze(story_chapter, 3)

    assert moment.emotional_tones == ("triumph",)
    assert moment.intensity_score == 0.5  # missing: the middle of the scale


def test_analyzer_falls_back_to_the_lexicon_when_no_excerpt_matches(
    fake_openai: Any, story_chapter: Chapter
) -> None:
    fake_openai.reply_chat(moments_reply({"text_excerpt": "Invented text.", "start_position": -4}))

    moments = analyzer(fake_openai).analyze(story_chapter, 3)

    assert 1 <= len(moments) <= 3
    for moment in moments:
        content = story_chapter.content
        assert content[moment.start_position : moment.end_position] == moment.text_excerpt


def test_a_reply_that_is_not_json_is_a_provider_error(
    fake_openai: Any, story_chapter: Chapter
) -> None:
    fake_openai.reply_chat("Sorry, I cannot help with that.")

    with pytest.raises(ProviderError, match="not JSON"):
        analyzer(fake_openai).analyze(story_chapter, 3)


def test_a_server_error_is_retried_and_then_succeeds(
    fake_openai: Any, story_chapter: Chapter
) -> None:
    fake_openai.reply_error(500, "overloaded")
    fake_openai.reply_chat(moments_reply({"text_excerpt": "It was a triumph."}))

    (moment,) = analyzer(fake_openai, retries=2).analyze(story_chapter, 3)

    assert moment.text_excerpt == "It was a triumph."
    assert len(fake_openai.requests) == 2


def test_persistent_server_errors_raise_provider_error_after_every_retry(
    fake_openai: Any, story_chapter: Chapter
) -> None:
    for _ in range(3):
        fake_openai.reply_error(503, "down for maintenance")

    with pytest.raises(ProviderError, match="3 attempt") as caught:
        analyzer(fake_openai, retries=2).analyze(story_chapter, 3)

    assert "down for maintenance" in str(caught.value)
    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(
    fake_openai: Any, story_chapter: Chapter, status: int
) -> None:
    fake_openai.reply_error(status, "bad request")

    with pytest.raises(ProviderError, match=f"HTTP {status}: bad request") as caught:
        analyzer(fake_openai, retries=3).analyze(story_chapter, 3)

    assert caught.value.details == {"status": status}
    assert len(fake_openai.requests) == 1


def test_a_timeout_on_every_attempt_raises_provider_error(
    fake_openai: Any, story_chapter: Chapter
) -> None:
    fake_openai.reply_slowly(10)
    fake_openai.reply_slowly(10)
    started = time.monotonic()

    with pytest.raises(ProviderError, match="2 attempt"):
        analyzer(fake_openai, retries=1, timeout=0.2).analyze(story_chapter, 3)

    assert time.monotonic() - started < 5
    assert len(fake_openai.requests) == 2


def test_a_refused_connection_raises_provider_error(story_chapter: Chapter) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIChatAnalyzer(f"http://127.0.0.1:{port}/v1", "", "m", 1.0, 1, **FAST)

    with pytest.raises(ProviderError, match="2 attempt"):
        provider.analyze(story_chapter, 3)


def test_rate_limits_back_off_exponentially_and_honour_retry_after(fake_openai: Any) -> None:
    fake_openai.reply_error(429, "slow down")
    fake_openai.reply_error(429, "slow down", **{"Retry-After": "0.05"})
    fake_openai.reply_error(502)
    fake_openai.reply_json({"ok": True})
    delays: list[float] = []
    client = OpenAIClient(
        fake_openai.base_url, retries=3, backoff_seconds=0.01, sleep=delays.append
    )

    assert client.post_json("/anything", {"x": 1}) == {"ok": True}

    assert delays == [0.01, 0.05, 0.04]


def test_an_api_base_that_is_not_a_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        OpenAIClient("file:///etc/passwd")


@pytest.mark.parametrize(
    ("excerpt", "found"),
    [
        ("It was a triumph.", "It was a triumph."),
        ("it  was a TRIUMPH", "It was a triumph"),
        ("Nowhere to be found", None),
        ("", None),
    ],
)
def test_excerpts_are_located_exactly_or_loosely(
    story_chapter: Chapter, excerpt: str, found: str | None
) -> None:
    span = locate_excerpt(story_chapter.content, excerpt)

    assert (story_chapter.content[span[0] : span[1]] if span else None) == found


# --------------------------------------------------------------------------- prompts


def a_moment(chapter: Chapter) -> EmotionalMoment:
    start = chapter.content.index("The monster")
    excerpt = "The monster lunged from the darkness"
    return EmotionalMoment(
        excerpt, start, start + len(excerpt), ("fear",), 0.9, excerpt, ("Anna",), "castle", ""
    )


def test_prompt_writer_uses_the_model_reply_as_the_prompt(
    fake_openai: Any, story_chapter: Chapter
) -> None:
    fake_openai.reply_chat('"A towering shadow lunges at a girl in a moonlit castle hall."')
    writer = OpenAIPromptWriter(fake_openai.base_url, "k", "gpt-test", 5.0, 0, **FAST)

    prompt = writer.write(a_moment(story_chapter), story_chapter, {"art_style": "gouache"})

    assert prompt.provider == "openai"
    assert prompt.prompt == "A towering shadow lunges at a girl in a moonlit castle hall."
    assert prompt.technical_params["seed"] == seed_for(prompt.prompt)
    assert "gouache" in prompt.style_modifiers
    brief = fake_openai.requests[0].json["messages"][1]["content"]
    assert "Art style: gouache" in brief
    assert "The monster lunged" in brief


def test_prompt_writer_rejects_an_empty_reply(fake_openai: Any, story_chapter: Chapter) -> None:
    fake_openai.reply_chat("   ")
    writer = OpenAIPromptWriter(fake_openai.base_url, "k", "gpt-test", 5.0, 0, **FAST)

    with pytest.raises(ProviderError, match="empty"):
        writer.write(a_moment(story_chapter), story_chapter, {})


# --------------------------------------------------------------------------- images

PROMPT = IllustrationPrompt("openai", "a castle at night", ("ink",), "blurry", {"seed": 1})


def image_generator(server: Any, retries: int = 1) -> OpenAIImageGenerator:
    return OpenAIImageGenerator(server.base_url, "k", "img-test", 64, 5.0, retries, **FAST)


def test_image_generator_writes_the_returned_png(
    fake_openai: Any, story_chapter: Chapter, tmp_path: Path, make_image: Callable[..., bytes]
) -> None:
    png = make_image("PNG")
    fake_openai.reply_image(png)
    destination = tmp_path / "chapter_3_scene_1.png"

    image_generator(fake_openai).generate(PROMPT, a_moment(story_chapter), destination)

    assert destination.read_bytes() == png
    assert [p.name for p in tmp_path.iterdir()] == [destination.name]
    request = fake_openai.requests[0]
    assert request.path == "/v1/images/generations"
    assert request.json == {
        "model": "img-test",
        "prompt": "a castle at night",
        "n": 1,
        "size": "64x64",
        "response_format": "b64_json",
    }


def test_image_generator_stores_other_formats_as_png(
    fake_openai: Any, story_chapter: Chapter, tmp_path: Path, make_image: Callable[..., bytes]
) -> None:
    fake_openai.reply_image(make_image("JPEG"))
    destination = tmp_path / "img.png"

    image_generator(fake_openai).generate(PROMPT, a_moment(story_chapter), destination)

    with Image.open(destination) as image:
        assert image.format == "PNG"
        assert image.size == (8, 8)


def test_image_generator_retries_a_server_error(
    fake_openai: Any, story_chapter: Chapter, tmp_path: Path, make_image: Callable[..., bytes]
) -> None:
    fake_openai.reply_error(500)
    fake_openai.reply_image(make_image("PNG"))

    image_generator(fake_openai).generate(PROMPT, a_moment(story_chapter), tmp_path / "i.png")

    assert (tmp_path / "i.png").is_file()


@pytest.mark.parametrize(
    "reply",
    [
        {"data": [{"b64_json": "bm90IGFuIGltYWdl"}]},  # base64 of "not an image"
        {"data": [{"b64_json": "%%% not base64 %%%"}]},
        {"data": [{"url": "https://example.invalid/image.png"}]},
        {"data": []},
        {"unexpected": True},
    ],
)
def test_image_generator_rejects_replies_without_a_valid_image(
    fake_openai: Any, story_chapter: Chapter, tmp_path: Path, reply: dict[str, object]
) -> None:
    fake_openai.reply_json(reply)

    with pytest.raises(ProviderError):
        image_generator(fake_openai).generate(PROMPT, a_moment(story_chapter), tmp_path / "x.png")

    assert list(tmp_path.iterdir()) == []
