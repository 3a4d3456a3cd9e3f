"""asyncio: ``AsyncJobs(jobs)`` offers the same clients with ``async`` methods.

Every call runs off the event loop, in the loop's default executor (a thread pool), through the
same ``Jobs`` (which gives each thread its own connection); handlers then run in that
executor's threads. The results are the same result objects, the errors the same errors.
Nothing else changes: a step is still serialized per instance across threads and processes,
and durajobs itself still starts no thread (the executor is the event loop's).

    ajobs = AsyncJobs(jobs)
    await ajobs.task("orders").send("o-1", OrderPlaced(...))
    await ajobs.run_due()
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Generic, ParamSpec, TypeVar

from .client import (
    AddResult,
    ClearResult,
    ContinuousClient,
    ContinuousStatus,
    DebounceClient,
    DebounceStatus,
    FlushResult,
    OnDuplicate,
    PauseResult,
    ResumeResult,
    SendResult,
    StartResult,
    TaskClient,
    TaskStatus,
    TaskTriggerResult,
    TerminateResult,
    TriggerResult,
)
from .jobs import Jobs

__all__ = ["AsyncContinuousClient", "AsyncDebounceClient", "AsyncJobs", "AsyncTaskClient"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
E = TypeVar("E")


async def _off_loop(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``fn`` in the running loop's default executor, in a copy of the caller's context
    (as ``asyncio.to_thread`` does): its context variables, such as OpenTelemetry's current
    span, reach the step (its ``durajobs.step`` span is the caller's span's child)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(None, functools.partial(context.run, fn, *args, **kwargs))


class AsyncContinuousClient(Generic[S]):
    """``ContinuousClient`` with ``async`` methods (same arguments, results and errors)."""

    def __init__(self, client: ContinuousClient[S]) -> None:
        self.sync = client

    async def start(self, user_id: str, state: S) -> StartResult:
        """See ``ContinuousClient.start``."""
        return await _off_loop(self.sync.start, user_id, state)

    async def start_many(self, items: Iterable[tuple[str, S]]) -> list[StartResult]:
        """See ``ContinuousClient.start_many``."""
        return await _off_loop(self.sync.start_many, list(items))

    async def trigger(self, user_id: str) -> TriggerResult:
        """See ``ContinuousClient.trigger``."""
        return await _off_loop(self.sync.trigger, user_id)

    async def status(self, user_id: str) -> ContinuousStatus:
        """See ``ContinuousClient.status``."""
        return await _off_loop(self.sync.status, user_id)

    async def get_state(self, user_id: str) -> S | None:
        """See ``ContinuousClient.get_state``."""
        return await _off_loop(self.sync.get_state, user_id)

    async def terminate(self, user_id: str, reason: str | None = None) -> TerminateResult:
        """See ``ContinuousClient.terminate``."""
        return await _off_loop(self.sync.terminate, user_id, reason)

    async def retry(self, user_id: str) -> ResumeResult:
        """See ``ContinuousClient.retry``."""
        return await _off_loop(self.sync.retry, user_id)

    async def pause(self, user_id: str) -> PauseResult:
        """See ``ContinuousClient.pause``."""
        return await _off_loop(self.sync.pause, user_id)

    async def resume(self, user_id: str) -> PauseResult:
        """See ``ContinuousClient.resume``."""
        return await _off_loop(self.sync.resume, user_id)


class AsyncDebounceClient(Generic[E, S]):
    """``DebounceClient`` with ``async`` methods (same arguments, results and errors)."""

    def __init__(self, client: DebounceClient[E, S]) -> None:
        self.sync = client

    async def add(self, user_id: str, event: E, *, key: str | None = None) -> AddResult:
        """See ``DebounceClient.add``."""
        return await _off_loop(self.sync.add, user_id, event, key=key)

    async def add_many(
        self,
        items: Iterable[tuple[str, E] | tuple[str, E, str | None]],
        *,
        on_duplicate: OnDuplicate = "raise",
    ) -> list[AddResult]:
        """See ``DebounceClient.add_many``."""
        return await _off_loop(self.sync.add_many, list(items), on_duplicate=on_duplicate)

    async def flush(self, user_id: str) -> FlushResult:
        """See ``DebounceClient.flush``."""
        return await _off_loop(self.sync.flush, user_id)

    async def clear(self, user_id: str) -> ClearResult:
        """See ``DebounceClient.clear``."""
        return await _off_loop(self.sync.clear, user_id)

    async def status(self, user_id: str) -> DebounceStatus:
        """See ``DebounceClient.status``."""
        return await _off_loop(self.sync.status, user_id)

    async def get_state(self, user_id: str) -> S | None:
        """See ``DebounceClient.get_state``."""
        return await _off_loop(self.sync.get_state, user_id)

    async def retry(self, user_id: str) -> ResumeResult:
        """See ``DebounceClient.retry``."""
        return await _off_loop(self.sync.retry, user_id)

    async def pause(self, user_id: str) -> PauseResult:
        """See ``DebounceClient.pause``."""
        return await _off_loop(self.sync.pause, user_id)

    async def resume(self, user_id: str) -> PauseResult:
        """See ``DebounceClient.resume``."""
        return await _off_loop(self.sync.resume, user_id)


class AsyncTaskClient(Generic[E, S]):
    """``TaskClient`` with ``async`` methods (same arguments, results and errors)."""

    def __init__(self, client: TaskClient[E, S]) -> None:
        self.sync = client

    async def send(self, user_id: str, event: E, *, key: str | None = None) -> SendResult:
        """See ``TaskClient.send``."""
        return await _off_loop(self.sync.send, user_id, event, key=key)

    async def send_many(
        self,
        items: Iterable[tuple[str, E] | tuple[str, E, str | None]],
        *,
        on_duplicate: OnDuplicate = "raise",
    ) -> list[SendResult]:
        """See ``TaskClient.send_many``."""
        return await _off_loop(self.sync.send_many, list(items), on_duplicate=on_duplicate)

    async def trigger(self, user_id: str) -> TaskTriggerResult:
        """See ``TaskClient.trigger``."""
        return await _off_loop(self.sync.trigger, user_id)

    async def status(self, user_id: str) -> TaskStatus:
        """See ``TaskClient.status``."""
        return await _off_loop(self.sync.status, user_id)

    async def get_state(self, user_id: str) -> S | None:
        """See ``TaskClient.get_state``."""
        return await _off_loop(self.sync.get_state, user_id)

    async def terminate(self, user_id: str, reason: str | None = None) -> TerminateResult:
        """See ``TaskClient.terminate``."""
        return await _off_loop(self.sync.terminate, user_id, reason)

    async def retry(self, user_id: str) -> ResumeResult:
        """See ``TaskClient.retry``."""
        return await _off_loop(self.sync.retry, user_id)

    async def pause(self, user_id: str) -> PauseResult:
        """See ``TaskClient.pause``."""
        return await _off_loop(self.sync.pause, user_id)

    async def resume(self, user_id: str) -> PauseResult:
        """See ``TaskClient.resume``."""
        return await _off_loop(self.sync.resume, user_id)


class AsyncJobs:
    """A ``Jobs`` for asyncio code: the same clients, with ``async`` methods.

    Args:
        jobs: the ``Jobs`` to use (shared with synchronous code if you like; ``close`` it
            yourself, or use ``await ajobs.close()``).
    """

    def __init__(self, jobs: Jobs) -> None:
        if not isinstance(jobs, Jobs):
            raise TypeError(f"AsyncJobs wraps a Jobs, got {jobs!r}")
        self.jobs = jobs

    def continuous(self, name: str) -> AsyncContinuousClient[Any]:
        """The async client of the Continuous job ``name``.

        Raises:
            JobNotFoundError: no Continuous job of that name is registered.
        """
        return AsyncContinuousClient(self.jobs.continuous(name))

    def debounce(self, name: str) -> AsyncDebounceClient[Any, Any]:
        """The async client of the Debounce job ``name``.

        Raises:
            JobNotFoundError: no Debounce job of that name is registered.
        """
        return AsyncDebounceClient(self.jobs.debounce(name))

    def task(self, name: str) -> AsyncTaskClient[Any, Any]:
        """The async client of the Task job ``name``.

        Raises:
            JobNotFoundError: no Task job of that name is registered.
        """
        return AsyncTaskClient(self.jobs.task(name))

    async def run_due(self) -> int:
        """See ``Jobs.run_due`` (handlers run in the executor's thread)."""
        return await _off_loop(self.jobs.run_due)

    async def next_alarm(self) -> datetime | None:
        """See ``Jobs.next_alarm``."""
        return await _off_loop(self.jobs.next_alarm)

    async def retry(self, instance_id: str) -> ResumeResult:
        """See ``Jobs.retry``."""
        return await _off_loop(self.jobs.retry, instance_id)

    async def pause(self, job_name: str) -> PauseResult:
        """See ``Jobs.pause``."""
        return await _off_loop(self.jobs.pause, job_name)

    async def resume(self, job_name: str) -> PauseResult:
        """See ``Jobs.resume``."""
        return await _off_loop(self.jobs.resume, job_name)

    async def close(self) -> None:
        """Close the wrapped ``Jobs`` (off the loop: closing checkpoints the database)."""
        await _off_loop(self.jobs.close)

    async def __aenter__(self) -> AsyncJobs:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
