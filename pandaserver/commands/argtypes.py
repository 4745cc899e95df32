"""Option types made from the config's own parsers, so that a command-line option and the
config key it mirrors accept the same values and say the same when they do not."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from pandaserver.config.values import parse_positive_int

T = TypeVar("T")


def option_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type`` from a parser whose ValueError says what is wrong."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


positive_int = option_type(parse_positive_int)
