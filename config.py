"""Configuration: ``config.toml`` read into frozen dataclasses.

Every key can be overridden by an environment variable ``ILLUSTRATOR_<SECTION>_<KEY>``
(for example ``ILLUSTRATOR_SERVER_PORT=9000``). An unknown section or key, or a value of
the wrong type or out of range, stops start-up with a ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "config.toml"
ENV_PREFIX = "ILLUSTRATOR_"


@dataclass(frozen=True)
class ServerConfig:
    """HTTP server."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_tokens: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 10 * 1024 * 1024
    max_websockets: int = 2000
    websocket_queue_size: int = 1000
    heartbeat_seconds: float = 20.0
    max_json_depth: int = 32
    max_style_keys: int = 32
    max_style_value_chars: int = 1000
    websocket_max_message_bytes: int = 64 * 1024
    websocket_send_timeout_seconds: float = 10.0
    websocket_close_timeout_seconds: float = 5.0
    allowed_hosts: tuple[str, ...] = ()
    body_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class MongoConfig:
    """Database. An empty ``uri`` starts the embedded SecantusDB server."""

    uri: str = ""
    database: str = "illustrator"
    driver: str = "pymongo"
    server_selection_timeout_ms: int = 2000


@dataclass(frozen=True)
class OutputConfig:
    """Where files go."""

    directory: str = "illustrator_output"


@dataclass(frozen=True)
class PersistenceConfig:
    """Group commit of the PersistenceActor."""

    batch_max_records: int = 500
    batch_max_delay_ms: float = 2.0
    fsync: bool = True
    embedded_checkpoints: int = 16
    write_checkpoint_files: bool = True
    session_summary_interval_ms: int = 10000
    session_summaries_per_second: int = 50
    events_linger_ms: int = 1500
    """How long events that claim nothing durable (a step starting) wait for their
    session's next checkpoint, to be stored inside its document; 0: written at once."""


@dataclass(frozen=True)
class ProcessingConfig:
    """Session limits and retry policy."""

    max_concurrent_sessions: int = 1000
    auto_resume: bool = True
    step_attempts: int = 3
    retry_backoff_ms: int = 200
    max_logs_per_session: int = 1000
    default_max_moments: int = 10
    instance_id: str = ""
    lease_seconds: float = 30.0


@dataclass(frozen=True)
class ProvidersConfig:
    """Analysis, prompt and image providers.

    ``local`` providers do real deterministic work offline; ``openai`` ones call an
    OpenAI-compatible API at ``api_base``.
    """

    analysis: str = "local"
    prompts: str = "local"
    images: str = "local"
    api_base: str = "http://127.0.0.1:11434/v1"
    api_key: str = ""
    chat_model: str = "gpt-4o-mini"
    image_model: str = "dall-e-3"
    timeout_seconds: float = 60.0
    retries: int = 2
    simulated_latency_ms: int = 0
    simulated_latency_max_ms: int = 0
    call_log: str = ""
    image_size: int = 256


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    mongodb: MongoConfig = field(default_factory=MongoConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)

    @property
    def output_dir(self) -> Path:
        """The output directory as an absolute path."""
        return Path(self.output.directory).resolve()


_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("mongodb", "driver"): ("pymongo", "motor", "mongomock"),
    ("providers", "analysis"): ("local", "openai"),
    ("providers", "prompts"): ("local", "openai"),
    ("providers", "images"): ("local", "openai"),
}
_MINIMUMS: dict[tuple[str, str], float] = {
    ("server", "port"): 0,
    ("server", "max_body_bytes"): 1024,
    ("server", "max_websockets"): 1,
    ("server", "websocket_queue_size"): 1,
    ("server", "heartbeat_seconds"): 0.1,
    ("server", "max_json_depth"): 2,
    ("server", "max_style_keys"): 1,
    ("server", "max_style_value_chars"): 1,
    ("server", "websocket_max_message_bytes"): 1024,
    ("server", "websocket_send_timeout_seconds"): 0.01,
    ("server", "websocket_close_timeout_seconds"): 0.01,
    ("server", "body_timeout_seconds"): 0.01,
    ("mongodb", "server_selection_timeout_ms"): 1,
    ("persistence", "batch_max_records"): 1,
    ("persistence", "batch_max_delay_ms"): 0,
    ("persistence", "embedded_checkpoints"): 1,
    ("persistence", "session_summary_interval_ms"): 0,
    ("persistence", "session_summaries_per_second"): 0,
    ("persistence", "events_linger_ms"): 0,
    ("processing", "max_concurrent_sessions"): 1,
    ("processing", "step_attempts"): 1,
    ("processing", "retry_backoff_ms"): 0,
    ("processing", "max_logs_per_session"): 1,
    ("processing", "default_max_moments"): 1,
    ("processing", "lease_seconds"): 0.2,
    ("providers", "timeout_seconds"): 0.001,
    ("providers", "retries"): 0,
    ("providers", "simulated_latency_ms"): 0,
    ("providers", "simulated_latency_max_ms"): 0,
    ("providers", "image_size"): 16,
}
_MAXIMUMS: dict[tuple[str, str], float] = {
    ("server", "port"): 65535,
    ("processing", "default_max_moments"): 20,
    ("providers", "image_size"): 2048,
}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (default: the project's ``config.toml``), then apply env overrides."""
    env = os.environ if env is None else env
    chosen = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    raw: dict[str, Any] = {}
    if path is not None or chosen.exists():
        try:
            raw = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {chosen}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {chosen} is not valid TOML: {exc}") from exc
    return config_from_mapping(raw, env)


def config_from_mapping(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from parsed TOML plus ``ILLUSTRATOR_*`` overrides."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(
                f"unknown config section [{name}]; expected one of {sorted(sections)}",
                details={"key": name},
            )
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table", details={"key": name})
    overrides = _env_overrides(env or {}, sections)
    built: dict[str, Any] = {}
    for name, _section_field in sections.items():
        cls = typing.get_type_hints(Config)[name]
        built[name] = _build_section(name, cls, dict(raw.get(name, {})), overrides.get(name, {}))
    return Config(**built)


def _env_overrides(
    env: Mapping[str, str], sections: Mapping[str, Any]
) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue  # ILLUSTRATOR_* variables of other tools (and our test knobs) are not ours
        found.setdefault(section, {})[rest[len(section) + 1 :]] = value
    return found


def _build_section(
    section: str, cls: type, values: dict[str, Any], env_values: dict[str, str]
) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in list(values) + list(env_values):
        if key not in known:
            raise ConfigError(
                f"unknown config key {section}.{key}; expected one of {sorted(known)}",
                details={"key": f"{section}.{key}"},
            )
    kwargs: dict[str, Any] = {}
    for key in known:
        if key in env_values:
            kwargs[key] = _parse_env(section, key, hints[key], env_values[key])
        elif key in values:
            kwargs[key] = _check_type(section, key, hints[key], values[key])
    for key, value in kwargs.items():
        _check_range(section, key, value)
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[hint]


def _check_type(section: str, key: str, hint: Any, value: Any) -> Any:
    full = f"{section}.{key}"
    ok: bool
    if typing.get_origin(hint) is tuple:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"{full} must be {_type_name(hint)}, got {value!r}", details={"key": full}
        )
    return value


def _parse_env(section: str, key: str, hint: Any, text: str) -> Any:
    full = f"{section}.{key}"
    var = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
    try:
        if typing.get_origin(hint) is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if hint is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        return text
    except ValueError as exc:
        raise ConfigError(
            f"{var} (for {full}) must be {_type_name(hint)}, got {text!r}",
            details={"key": full},
        ) from exc


def _check_range(section: str, key: str, value: Any) -> None:
    full = f"{section}.{key}"
    choices = _CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{full} must be one of {list(choices)}, got {value!r}", details={"key": full}
        )
    low = _MINIMUMS.get((section, key))
    if low is not None and value < low:
        raise ConfigError(f"{full} must be at least {low}, got {value!r}", details={"key": full})
    high = _MAXIMUMS.get((section, key))
    if high is not None and value > high:
        raise ConfigError(f"{full} must be at most {high}, got {value!r}", details={"key": full})
