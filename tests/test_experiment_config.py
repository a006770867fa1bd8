"""The one config mechanism: YAML presets over typed dataclass defaults."""

import dataclasses
from typing import List, Literal, Optional

import pytest

from kit.config import ConfigError, apply_overrides, load_preset, read_data_sources


@dataclasses.dataclass
class Demo:
    lr: float = 0.1
    epochs: int = 3
    milestones: List[int] = dataclasses.field(default_factory=lambda: [1, 2])
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weights: Optional[str] = None
    compile: bool = False


def write(tmp_path, text):
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_preset_overrides_defaults_and_converts_numbers(tmp_path):
    path = write(tmp_path, "demo:\n  fast:\n    lr: 1e-3\n    epochs: 5\n    milestones: [3]\n")
    config = load_preset("demo", "fast", Demo, path)
    assert config == Demo(lr=1e-3, epochs=5, milestones=[3])
    assert isinstance(config.lr, float)


def test_empty_preset_gives_defaults(tmp_path):
    path = write(tmp_path, "demo:\n  plain:\n")
    assert load_preset("demo", "plain", Demo, path) == Demo()


def test_unknown_preset_lists_valid_ones(tmp_path):
    path = write(tmp_path, "demo:\n  a: {}\n  b: {}\n")
    with pytest.raises(ConfigError, match="unknown preset 'c'.*valid presets: a, b"):
        load_preset("demo", "c", Demo, path)


def test_unknown_key_is_rejected(tmp_path):
    path = write(tmp_path, "demo:\n  typo:\n    learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        load_preset("demo", "typo", Demo, path)


@pytest.mark.parametrize(
    "key, value",
    [
        ("epochs", 2.5),
        ("epochs", True),
        ("lr", "fast"),
        ("optimizer", "adam"),
        ("milestones", ["x"]),
        ("compile", "yes"),
    ],
)
def test_wrong_types_are_rejected(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        apply_overrides(Demo(), {key: value})


def test_optional_accepts_none_and_value():
    assert apply_overrides(Demo(), {"weights": None}).weights is None
    assert apply_overrides(Demo(), {"weights": "w.pth"}).weights == "w.pth"


def test_missing_section_and_bad_yaml_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no 'demo:' section"):
        load_preset("demo", "x", Demo, write(tmp_path, "other: {}\n"))
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_preset("demo", "x", Demo, write(tmp_path, "demo: [\n"))
    assert "\n" not in str(err.value)


def test_messages_are_single_lines(tmp_path):
    path = write(tmp_path, "demo:\n  a: {}\n")
    with pytest.raises(ConfigError) as err:
        load_preset("demo", "zzz", Demo, path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text, where, reason",
    [
        # a key indented one space too far: YAML stops at line 4
        ("demo:\n  a:\n    lr: 0.1\n     epochs: 3\n", "line 4, column 12", "mapping values"),
        ("demo:\n  a:\n\tlr: 1\n", "line 3, column 1", "found character '\\t'"),
        ("demo:\n  a: {lr: 1\n  b: 2\n", "line 3, column 4", "expected ',' or '}'"),
    ],
)
def test_yaml_syntax_error_names_yamls_line_and_reason(tmp_path, text, where, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_preset("demo", "a", Demo, path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path} {where} is not valid YAML: "), message
    assert reason in message and message.endswith("fix the syntax there")


def test_data_sources_are_read_from_the_config_file(tmp_path):
    path = write(tmp_path, 'data_sources:\n  flowers: "https://example.org/f.zip"\ndemo: {}\n')
    assert read_data_sources(path) == {"flowers": "https://example.org/f.zip"}
    assert read_data_sources(write(tmp_path, "demo: {}\n")) == {}
    with pytest.raises(ConfigError, match="data_sources"):
        read_data_sources(write(tmp_path, "data_sources:\n  flowers: [1, 2]\n"))
