"""Health: one verdict on a database, for ``durajobs doctor``, ``GET /healthz`` of ``durajobs
serve`` and of the daemon's metrics address.

Theory of operation
-------------------
The checks themselves are ``Admin.doctor``'s (the one place they are written); this module
turns them into what a probe wants and covers the case ``Admin`` cannot: a database that cannot
even be opened (the PostgreSQL server stopped, a missing or corrupt file) is a report with one
failed ``store`` check, not an exception.

- ``status``: ``"failing"`` when a check failed (the store unreachable or unusable, alarms
  overdue with no daemon serving), ``"degraded"`` when one warns (parked or failing instances,
  alarms overdue while a daemon serves, orphaned jobs), else ``"ok"``.
- ``GET /healthz`` answers ``{"status": ..., "checks": [{"name", "level", "detail"}...]}``,
  200 for ok and degraded, 503 for failing. It skips the integrity check (SQLite's reads the
  whole file); ``durajobs doctor`` runs it. Every other check is a few index reads (parked and
  failing counts: ``InspectStore.count_flagged``; overdue alarms: the due index); only
  ``doctor --app`` reads every job's counts, to name orphaned jobs with their size
  (``admin.orphaned_jobs``). It loads the application as ``durajobs check`` does
  (``durajobs.apploader.load_app(definitions_only=True)``): the application's own ``Jobs``
  opens nothing, so a doctor run never creates or migrates the database.
- ``durajobs doctor`` exits 0, 1 or 2 (``DoctorReport.exit_code``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .errors import StorageError

if TYPE_CHECKING:
    from .admin import Admin, DoctorReport

__all__ = ["defined_jobs", "healthz", "report"]


def report(
    admin: Callable[[], Admin],
    location: str,
    *,
    thorough: bool = False,
    defined: Mapping[str, str] | None = None,
    overdue_after: float | None = None,
) -> DoctorReport:
    """The health report of a database, never raising for a database that is down.

    Args:
        admin: returns the ``Admin`` to read with (opening it may raise ``StorageError``).
        location: the database, as shown when it cannot be opened (no password is shown).
        thorough: run the integrity check too (``durajobs doctor``).
        defined: the application's jobs (name -> kind), to name orphaned jobs.
        overdue_after: seconds late before an alarm counts as overdue (default 60).
    """
    from .admin import OVERDUE_AFTER, Check
    from .admin import DoctorReport as Report
    from .stores import display_location

    after = OVERDUE_AFTER if overdue_after is None else overdue_after
    try:
        return admin().doctor(overdue_after=after, defined=defined, thorough=thorough)
    except StorageError as exc:
        return Report(display_location(location), [Check("store", "fail", str(exc))], [])


def healthz(result: DoctorReport) -> tuple[int, bytes]:
    """``(HTTP status, JSON body)`` of ``GET /healthz`` for ``result``: 503 when failing."""
    body = {"status": result.status, "checks": [c.to_dict() for c in result.checks]}
    code = 503 if result.status == "failing" else 200
    return code, json.dumps(body, ensure_ascii=False).encode() + b"\n"


def defined_jobs(jobs: object) -> dict[str, str]:
    """Job name -> kind of an application's ``Jobs`` (or of a registry mapping of
    definitions), for ``Admin.doctor(defined=...)``.

    Raises:
        TypeError: ``jobs`` is neither a ``Jobs`` nor a mapping of definitions.
    """
    from .jobs import Jobs

    registry = jobs.registry if isinstance(jobs, Jobs) else jobs
    if not isinstance(registry, Mapping):
        raise TypeError(f"expected a durajobs.Jobs or a mapping of definitions, got {jobs!r}")
    found: dict[str, str] = {}
    for name, job in registry.items():
        kind = getattr(job, "kind", None)
        if not isinstance(name, str) or not isinstance(kind, str):
            raise TypeError(f"expected a mapping of job name -> definition, got {name!r}: {job!r}")
        found[name] = kind
    return found
