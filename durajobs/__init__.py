"""durajobs: durable Continuous, Debounce and Task jobs for Python on one SQLite file.

See the README for a tour; ``Jobs`` is the entry point.
"""

from __future__ import annotations

from . import errors
from .client import (
    AddResult,
    ClearResult,
    ContinuousStatus,
    DebounceStatus,
    FlushResult,
    ResumeResult,
    SendResult,
    StartResult,
    TaskStatus,
    TaskTriggerResult,
    TerminateResult,
    TriggerResult,
)
from .clock import FakeClock, SystemClock
from .contexts import ContinuousContext, DebounceContext, DebounceEventContext, TaskContext
from .definitions import Continuous, Debounce, Task
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
from .jobs import Jobs
from .retry import Backoff, Retry
from .schedules import cron, every
from .tracker import Tracker

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
