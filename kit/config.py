"""Experiment presets: typed defaults in a dataclass, YAML presets over them.

This is the kit's one configuration mechanism. Each demo declares its settings as a
dataclass whose fields carry the defaults and their types; ``config.yml`` holds named
presets that override some of those fields:

    flower:                 # the demo's section
      vit_linear:           # a preset, chosen with --exp_name vit_linear
        lr: 0.001
        epochs: 100

Unknown presets and unknown keys are errors (a typo must never be silently ignored), and
every value is checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config.yml"  # the kit's root


class ConfigError(ValueError):
    """A bad preset, key or value; the message is one line that says what to do."""


def load_preset(section: str, preset: str, defaults: type[T], path: str | Path | None = None) -> T:
    """Return ``defaults`` (a dataclass type) with preset ``section.preset`` of ``path`` applied."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    presets = read_presets(path, section)
    if preset not in presets:
        raise ConfigError(
            f"unknown preset '{preset}' in section '{section}' of {path}; "
            f"valid presets: {', '.join(sorted(presets)) or '(none)'}"
        )
    overrides = presets[preset] or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"preset '{section}.{preset}' in {path} must be a mapping of key: value")
    return apply_overrides(defaults(), overrides, where=f"preset '{section}.{preset}' in {path}")


def read_presets(path: Path, section: str) -> dict[str, Any]:
    """The mapping of preset name -> overrides for one section of a YAML file."""
    data = _read_yaml(path)
    if not isinstance(data.get(section), dict):
        raise ConfigError(f"{path} has no '{section}:' section of presets")
    return data[section]


def read_data_sources(path: str | Path | None = None) -> dict[str, str]:
    """The ``data_sources:`` section of config.yml: data set name -> where to get it (a URL
    or a path, set by the course staff), shown when a demo does not find its data."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    sources = _read_yaml(path).get("data_sources") or {}
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise ConfigError(f"data_sources in {path} must map each data set to a text")
    return sources


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; run from the kit's folder") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_line(path, err)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of sections (flower:, pixmo:, ...)")
    return data


def yaml_error_line(path: str | Path, err: yaml.YAMLError) -> str:
    """One line naming the place YAML reports and YAML's own reason, e.g.
    ``config.yml line 12, column 9 is not valid YAML: mapping values are not allowed here;
    fix the syntax there``."""
    mark = getattr(err, "problem_mark", None)
    at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    reason = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None and mark is not None:
        if context_mark.line != mark.line:
            context += f" at line {context_mark.line + 1}"
    why = f"{reason} ({context})" if context else reason
    return f"{path}{at} is not valid YAML: {why}; fix the syntax there"


def apply_overrides(config: T, overrides: dict[str, Any], where: str = "overrides") -> T:
    """Return a copy of dataclass instance ``config`` with ``overrides`` applied and type-checked."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    checked = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key '{key}' in {where}; valid keys: {', '.join(sorted(fields))}"
            )
        checked[key] = _check_type(value, hints[key], f"'{key}' in {where}")
    return dataclasses.replace(config, **checked)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data view of a config, for saving next to a run (YAML-safe)."""
    return dataclasses.asdict(config)


def _check_type(value: Any, expected: Any, what: str) -> Any:
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _check_type(value, option, what)
            except ConfigError:
                pass
        raise ConfigError(f"{what} must be {_type_name(expected)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if expected is type(None):
        if value is None:
            return None
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            item = args[0] if args else Any
            items = [_check_type(v, item, what) for v in value]
            return items if origin is list else tuple(items)
    elif expected is Any:
        return value
    elif expected is float:
        # YAML reads "1e-3" as a string and "1" as an int: accept both spellings of a number.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(expected, type) and isinstance(value, expected):
        return value
    raise ConfigError(f"{what} must be {_type_name(expected)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
