"""The durajobs error hierarchy.

Every error the library raises on purpose is a :class:`DurajobsError`. Leaves also subclass
the builtin they resemble, so ``except LookupError`` or ``except ValueError`` keeps working
for callers who do not know durajobs. Messages name the instance id, the job and the field.
"""

from __future__ import annotations

__all__ = [
    "DuplicateEventError",
    "DurajobsError",
    "ExecutionError",
    "InstanceBusyError",
    "InstanceNotFoundError",
    "InvalidStateError",
    "JobNotFoundError",
    "SchedulerError",
    "StorageError",
    "ValidationError",
]


class DurajobsError(Exception):
    """Base class of every error durajobs raises on purpose."""


class JobNotFoundError(DurajobsError, LookupError):
    """No job of that name (and kind) is registered."""


class InstanceNotFoundError(DurajobsError, LookupError):
    """The instance does not exist (only raised where a missing instance cannot be a no-op)."""


class InvalidStateError(DurajobsError, RuntimeError):
    """The operation is not allowed for the instance's kind or status."""


class ValidationError(DurajobsError, ValueError):
    """A state or event does not fit its declared type; the message names the field and why."""


class ExecutionError(DurajobsError):
    """A user handler raised; the original exception is ``__cause__`` and ``.cause``."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class DuplicateEventError(DurajobsError, ValueError):
    """An event with the same idempotency key was already accepted for this instance."""


class InstanceBusyError(DurajobsError, TimeoutError):
    """Waited longer than ``wait_timeout`` for another step of the same instance to end."""


class StorageError(DurajobsError, OSError):
    """The database file is unusable: missing, not a database, corrupt, read-only, full, locked.

    The message names the path and SQLite's reason.
    """


class SchedulerError(DurajobsError, ValueError):
    """A cron expression, duration or timezone is invalid (raised when the definition is made)."""
