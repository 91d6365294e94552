"""Declarative argument checks: a rule per kind of option instead of hand-written ``raise`` blocks.

Example: ``validate(steps=(steps, POSITIVE_INT), lr=(lr, POSITIVE))`` raises one ``ValueError`` of
the form ``"steps must be a positive int, got 0"`` for the first argument that breaks its rule
(booleans are never numbers here, NaN never passes a bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FRACTION",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "OPTIONAL_POSITIVE_INT",
    "POSITIVE",
    "POSITIVE_INT",
    "UNIT_INTERVAL",
    "OneOf",
    "Rule",
    "validate",
]


@dataclass(frozen=True)
class Rule:
    """What one argument must be.

    Attributes:
        what: the rule in words, as the error message states it.
        integer: ints only (else ints and floats).
        low: smallest allowed value (``None``: no bound).
        high: largest allowed value (``None``: no bound).
        low_open: whether ``low`` itself is excluded.
        optional: whether ``None`` is allowed.

    Examples:
        >>> POSITIVE_INT.accepts(3), POSITIVE_INT.accepts(0), POSITIVE_INT.accepts(True)
        (True, False, False)
    """

    what: str
    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        kinds = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value <= self.high


@dataclass(frozen=True)
class OneOf:
    """A rule for options that take one of a few values.

    Examples:
        >>> OneOf(("least", "most")).accepts("most"), OneOf(("least", "most")).what
        (True, "one of ('least', 'most')")
    """

    choices: tuple[Any, ...]

    @property
    def what(self) -> str:
        return f"one of {self.choices}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, type(self.choices[0])) and value in self.choices


POSITIVE_INT = Rule("a positive int", integer=True, low=1)
OPTIONAL_POSITIVE_INT = Rule("a positive int or None", integer=True, low=1, optional=True)
NON_NEGATIVE_INT = Rule("a non-negative int", integer=True, low=0)
POSITIVE = Rule("a positive number", low=0.0, low_open=True)
NON_NEGATIVE = Rule("a number >= 0", low=0.0)
UNIT_INTERVAL = Rule("a number in [0, 1]", low=0.0, high=1.0)
FRACTION = Rule("a number in (0, 1]", low=0.0, high=1.0, low_open=True)


def validate(**arguments: tuple[Any, Rule | OneOf]) -> None:
    """Raise ``ValueError`` for the first argument that breaks its rule.

    Args:
        **arguments: ``name=(value, rule)``.

    Examples:
        >>> validate(steps=(5, POSITIVE_INT), lr=(0.1, POSITIVE))
        >>> try:
        ...     validate(steps=(0, POSITIVE_INT))
        ... except ValueError as e:
        ...     print(e)
        steps must be a positive int, got 0
    """
    for name, (value, rule) in arguments.items():
        if not rule.accepts(value):
            raise ValueError(f"{name} must be {rule.what}, got {value!r}")
