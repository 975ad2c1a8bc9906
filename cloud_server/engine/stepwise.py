"""Work that runs on the model's thread in pieces: a generator that yields between forwards.

A chunked prefill is one: each `next()` runs one chunk, and the worker submits each piece as its own
scheduler call, so other sessions' steps run between the pieces (issue 12, item 13). In-process callers
`drive` it to the end in one go. Closing the generator between pieces (its caller went away) runs its
cleanup: nothing half-prefilled survives.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")

Stepwise = Generator[None, None, T]


def advance(steps: Stepwise[T]) -> tuple[bool, T | None]:
    """Run the next piece: (False, None) while pieces remain, (True, result) once the work is done."""
    try:
        next(steps)
    except StopIteration as stop:
        return True, stop.value
    return False, None


def drive(steps: Stepwise[T]) -> T:
    """Run every piece now and return the result."""
    while True:
        done, value = advance(steps)
        if done:
            return value  # type: ignore[return-value]
