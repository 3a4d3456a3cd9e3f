"""Definitions refuse what they cannot run: an async handler (``async def``, an async generator,
an async ``__call__``, a partial of one) is a ``TypeError`` naming the handler and its field,
when the job is defined. repro async_handler.py (issue 12).
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import pytest

from durajobs import Continuous, Debounce, Task, every


@attrs.define
class Count:
    n: int = 0


def nothing(ctx: Any) -> None:
    return None


async def refresh_async(ctx: Any) -> None:
    ctx.state = Count(99)


async def gen_async(ctx: Any) -> Any:
    yield ctx


class AsyncCallable:
    async def __call__(self, ctx: Any) -> None:
        return None


@pytest.mark.parametrize(
    "handler",
    [refresh_async, gen_async, AsyncCallable(), functools.partial(refresh_async)],
    ids=["async-def", "async-generator", "async-__call__", "partial"],
)
def test_async_handler_is_refused_at_definition(handler: Any) -> None:
    with pytest.raises(TypeError, match="async") as excinfo:
        Continuous(state=Count, schedule=every("1h"), execute=handler)
    assert "execute" in str(excinfo.value)
    with pytest.raises(TypeError, match="on_event"):
        Task(state=Count, event=Count, on_event=handler, execute=nothing)
    with pytest.raises(TypeError, match="on_error"):
        Debounce(event=Count, flush_after="1h", execute=nothing, on_error=handler)


def test_async_handler_names_the_handler() -> None:
    with pytest.raises(TypeError, match="refresh_async"):
        Continuous(state=Count, schedule=every("1h"), execute=refresh_async)
