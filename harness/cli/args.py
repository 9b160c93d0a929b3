"""Argument types shared by the commands: positive numbers and bounded whole numbers, each refused by argparse with
a message that names the flag."""

from __future__ import annotations

import argparse
import math


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (value > 0 and math.isfinite(value)):  # NaN fails `> 0`
            raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def ranged(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low} .. {high}")
        return value
    parse.__name__ = f"number in {low} .. {high}"
    return parse


def nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value names nothing")
    return text.strip()
