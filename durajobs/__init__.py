"""durajobs: durable Continuous, Debounce and Task jobs for Python on one SQLite file.

See the README for a tour; ``Jobs`` is the entry point.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import (
    DuplicateEventError,
    DurajobsError,
    ExecutionError,
    InstanceBusyError,
    InstanceNotFoundError,
    InvalidStateError,
    JobNotFoundError,
    SchedulerError,
    StorageError,
    ValidationError,
)

if TYPE_CHECKING:
    from .client import (
        AddResult,
        ClearResult,
        ContinuousStatus,
        DebounceStatus,
        FlushResult,
        PauseResult,
        ResumeResult,
        SendResult,
        StartResult,
        TaskStatus,
        TaskTriggerResult,
        TerminateResult,
        TriggerResult,
    )
    from .clock import FakeClock, SystemClock
    from .core.contexts import ContinuousContext, DebounceContext, DebounceEventContext, TaskContext
    from .core.definitions import Continuous, Debounce, Task
    from .core.retry import Backoff, Retry
    from .core.schedules import cron, every
    from .jobs import Jobs
    from .tracker import Tracker

# Everything else loads on first use (PEP 562): ``durajobs ls`` should not pay for cattrs,
# croniter and the step machinery it never touches.
_LAZY = {
    "AddResult": "client",
    "Backoff": "core.retry",
    "ClearResult": "client",
    "Continuous": "core.definitions",
    "ContinuousContext": "core.contexts",
    "ContinuousStatus": "client",
    "Debounce": "core.definitions",
    "DebounceContext": "core.contexts",
    "DebounceEventContext": "core.contexts",
    "DebounceStatus": "client",
    "FakeClock": "clock",
    "FlushResult": "client",
    "Jobs": "jobs",
    "PauseResult": "client",
    "ResumeResult": "client",
    "Retry": "core.retry",
    "SendResult": "client",
    "StartResult": "client",
    "SystemClock": "clock",
    "Task": "core.definitions",
    "TaskContext": "core.contexts",
    "TaskStatus": "client",
    "TaskTriggerResult": "client",
    "TerminateResult": "client",
    "Tracker": "tracker",
    "TriggerResult": "client",
    "cron": "core.schedules",
    "every": "core.schedules",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durajobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AddResult",
    "Backoff",
    "ClearResult",
    "Continuous",
    "ContinuousContext",
    "ContinuousStatus",
    "Debounce",
    "DebounceContext",
    "DebounceEventContext",
    "DebounceStatus",
    "DuplicateEventError",
    "DurajobsError",
    "ExecutionError",
    "FakeClock",
    "FlushResult",
    "InstanceBusyError",
    "InstanceNotFoundError",
    "InvalidStateError",
    "JobNotFoundError",
    "Jobs",
    "PauseResult",
    "ResumeResult",
    "Retry",
    "SchedulerError",
    "SendResult",
    "StartResult",
    "StorageError",
    "SystemClock",
    "Task",
    "TaskContext",
    "TaskStatus",
    "TaskTriggerResult",
    "TerminateResult",
    "Tracker",
    "TriggerResult",
    "ValidationError",
    "cron",
    "errors",
    "every",
]
