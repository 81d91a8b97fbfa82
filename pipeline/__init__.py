"""The work itself: manuscript parsing, emotional analysis, prompt writing, image generation.

Each stage sits behind a small Protocol (``EmotionAnalyzer``, ``PromptWriter``,
``ImageGenerator``) with an offline default that does real, deterministic work and an
OpenAI-compatible remote provider; ``build_providers`` picks them from the configuration.
Every interface is a plain synchronous function: the pipeline runs on actor threads.
"""

from __future__ import annotations

from pipeline.analysis import (
    MAX_MOMENTS,
    TONES,
    EmotionalMoment,
    EmotionAnalyzer,
    LexiconAnalyzer,
)
from pipeline.images import (
    ImageGenerator,
    LocalImageGenerator,
    image_filename,
    write_file_atomically,
)
from pipeline.manuscripts import (
    Chapter,
    Manuscript,
    ManuscriptLimits,
    decode_upload,
    parse_manuscript_json,
    parse_manuscript_text,
)
from pipeline.prompts import IllustrationPrompt, PromptWriter, TemplatePromptWriter
from pipeline.providers import (
    STAGE_ANALYZE,
    STAGE_IMAGE,
    STAGE_PROMPT,
    CallLog,
    Providers,
    RecordingProviders,
    SimulatedLatency,
    build_providers,
    local_providers,
    read_call_log,
)
from pipeline.remote import OpenAIChatAnalyzer, OpenAIImageGenerator, OpenAIPromptWriter

__all__ = [
    "MAX_MOMENTS",
    "STAGE_ANALYZE",
    "STAGE_IMAGE",
    "STAGE_PROMPT",
    "TONES",
    "CallLog",
    "Chapter",
    "EmotionAnalyzer",
    "EmotionalMoment",
    "IllustrationPrompt",
    "ImageGenerator",
    "LexiconAnalyzer",
    "LocalImageGenerator",
    "Manuscript",
    "ManuscriptLimits",
    "OpenAIChatAnalyzer",
    "OpenAIImageGenerator",
    "OpenAIPromptWriter",
    "PromptWriter",
    "Providers",
    "RecordingProviders",
    "SimulatedLatency",
    "TemplatePromptWriter",
    "build_providers",
    "decode_upload",
    "image_filename",
    "local_providers",
    "parse_manuscript_json",
    "parse_manuscript_text",
    "read_call_log",
    "write_file_atomically",
]
