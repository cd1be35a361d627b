"""Checks on model options, so a bad value in a config is one line naming the option."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mammolens.utils.errors import ConfigError


def require_int(value: Any, option: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"model option {option!r} must be an integer >= {minimum}, got {value!r}")
    return value


def require_fraction(value: Any, option: str) -> float:
    """A probability such as dropout: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"model option {option!r} must be a number in [0, 1), got {value!r}")
    return float(value)


def require_choice(value: Any, option: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"model option {option!r} must be one of {', '.join(choices)}; got {value!r}")
    return value
