"""The transformers releases the native model supports: 5.24 and newer 5.x.

Measured with the rest of the stack fixed (torch 2.13, peft 0.21): 5.17.0 (the stock image of our GPU machines),
5.20.2, 5.21.1, 5.22.2 and 5.23.0 fail the model tests. Before 5.24 the decoder's outputs have no `cache` field
(the cache is still `past_key_values`) and models have no `activation_checkpointing_enable`.
"""

from __future__ import annotations

import importlib.metadata

MIN_TRANSFORMERS = (5, 24)


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def transformers_problem(installed: str | None = None) -> str | None:
    """Why the installed transformers cannot run the model (with the fix), or None."""
    installed = installed or importlib.metadata.version("transformers")
    release = _release(installed)
    wanted = ".".join(map(str, MIN_TRANSFORMERS))
    if release < MIN_TRANSFORMERS or release[:1] > (5,):
        return (f"transformers {installed} is not supported (the native model needs >={wanted},<6: the decoder's "
                f"`cache` output and `activation_checkpointing_enable`); install it: pip install "
                f"'transformers>={wanted},<6'")
    return None
