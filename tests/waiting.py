"""Waiting for another thread or process: poll an observable condition up to a deadline.

Never a fixed sleep: the wait ends as soon as the condition holds, and a deadline that passes
fails the test, naming what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], *, timeout: float = 30.0, what: str = "", interval: float = 0.005
) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy; return it.

    Raises:
        AssertionError: ``timeout`` seconds passed first; the message names ``what`` (or the
            condition).
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
    return value
