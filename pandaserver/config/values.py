"""The parsers of ``[daemon]`` values: booleans as PanDA reads them, whole numbers and
seconds, bounded or not. Each returns the value or raises ``ValueError`` with a message
that says what is allowed and what was given; the section's parser adds where."""

from __future__ import annotations

from collections.abc import Callable

from pandaserver.config.problems import shown_seconds

# PanDA's own parser (pandacommon's LiveConfigParser.expand_values) turns exactly "True" and
# "False" into booleans; any other spelling stays a string, which PanDA's daemon treats as
# true (even "false"). So only these two are accepted, and anything else is an error.
BOOLEANS = {"True": True, "False": False}


def parse_bool(text: str) -> bool:
    value = BOOLEANS.get(text.strip())
    if value is not None:
        return value
    hint = ""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        hint = " (did you mean True?)"
    elif lowered in ("false", "no", "off", "0"):
        hint = " (did you mean False?)"
    raise ValueError(f"must be True or False, got: {text.strip()!r}{hint}; PanDA's config"
                     " parser reads only these two spellings as booleans")


def parse_positive_int(text: str) -> int:
    """A whole number of at least 1 (used by command-line options too)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"must be a whole number, got: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, got: {value}")
    return value


def bounded_int(low: int, high: int, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be a whole number from {low} to {high},"
                             f" got: {text.strip()!r}") from None
        if value < low:
            raise ValueError(f"must be at least {low}, got: {value} (allowed: {low} to {high})")
        if value > high:
            raise ValueError(f"must be at most {high}, got: {value}{why}")
        return value

    return parse


def parse_seconds(text: str, *, allow_zero: bool = False) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"must be a number of seconds, got: {text.strip()!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"must be a finite number of seconds, got: {text.strip()!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"must be {'zero or ' if allow_zero else ''}positive,"
                         f" got: {text.strip()!r}")
    return value


def bounded_seconds(low: float, high: float, *, allow_zero: bool = False, unit: str = "s",
                    why: str = "") -> Callable[[str], float]:
    def shown(value: float) -> str:
        return f"{value:g} days" if unit == "days" else shown_seconds(value)

    def parse(text: str) -> float:
        try:
            value = parse_seconds(text, allow_zero=allow_zero)
        except ValueError as exc:
            message = str(exc)
            if unit == "days":
                message = message.replace("number of seconds", "number of days")
            raise ValueError(message) from None
        if value < low and not (allow_zero and value == 0):
            raise ValueError(f"must be at least {shown(low)}, got: {text.strip()!r}"
                             f" (allowed: {shown(low)} to {shown(high)}){why}")
        if value > high:
            raise ValueError(f"must be at most {shown(high)}, got: {text.strip()!r}"
                             f" (allowed: {shown(low)} to {shown(high)})")
        return value

    return parse


def parse_str(text: str) -> str:
    return text.strip()
