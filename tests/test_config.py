"""Configuration: defaults, file, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import DEFAULT_CONFIG_PATH, config_from_mapping, load_config
from errors import ConfigError


def test_project_config_file_loads_with_documented_defaults() -> None:
    config = load_config(DEFAULT_CONFIG_PATH, env={})
    assert config.server.port == 8080
    assert config.mongodb.uri == ""
    assert config.mongodb.driver == "pymongo"
    assert config.persistence.fsync is True
    assert config.output.directory == "illustrator_output"


def test_environment_overrides_every_kind_of_value() -> None:
    config = config_from_mapping(
        {"server": {"port": 1234}},
        {
            "ILLUSTRATOR_SERVER_PORT": "9000",
            "ILLUSTRATOR_SERVER_API_TOKENS": "a, b",
            "ILLUSTRATOR_PERSISTENCE_FSYNC": "false",
            "ILLUSTRATOR_PERSISTENCE_BATCH_MAX_DELAY_MS": "0.5",
            "ILLUSTRATOR_MONGODB_URI": "mongodb://db:27017",
            "UNRELATED_VARIABLE": "x",
        },
    )
    assert config.server.port == 9000
    assert config.server.api_tokens == ("a", "b")
    assert config.persistence.fsync is False
    assert config.persistence.batch_max_delay_ms == 0.5
    assert config.mongodb.uri == "mongodb://db:27017"


def test_config_objects_are_frozen() -> None:
    config = config_from_mapping({})
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "env", "names"),
    [
        ({"server": {"prot": 1}}, {}, "server.prot"),
        ({"sever": {}}, {}, "sever"),
        ({"server": {"port": "eighty"}}, {}, "server.port"),
        ({"server": {"port": 70000}}, {}, "server.port"),
        ({"persistence": {"fsync": "yes"}}, {}, "persistence.fsync"),
        ({"mongodb": {"driver": "oracle"}}, {}, "mongodb.driver"),
        ({"processing": {"step_attempts": 0}}, {}, "processing.step_attempts"),
        ({}, {"ILLUSTRATOR_SERVER_PORT": "abc"}, "ILLUSTRATOR_SERVER_PORT"),
        ({}, {"ILLUSTRATOR_PERSISTENCE_FSYNC": "maybe"}, "persistence.fsync"),
        ({}, {"ILLUSTRATOR_SERVER_NOPE": "1"}, "server.nope"),
    ],
)
def test_bad_configuration_names_the_key(raw: dict, env: dict, names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(raw, env)
    assert names in str(caught.value)


def test_config_file_errors_are_clear(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, env={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})


def test_other_config_file_is_read(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[server]\nport = 9999\n[output]\ndirectory = "/tmp/x"\n')
    config = load_config(other, env={})
    assert config.server.port == 9999
    assert config.output_dir == Path("/tmp/x")
