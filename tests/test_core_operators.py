"""The operators' actions (terminate, trigger/flush requests, clear, resume) on rows in a status
the transition table does not know: ``durajobs terminate`` must always work, as it did before
the core was split into per-kind tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from core_table import T0, run

from durajobs import Continuous, Debounce, Task, every
from durajobs.admin import Admin
from durajobs.core.decision import Clear, Outcome, Request, Resume, Terminate
from durajobs.core.rows import Instance
from durajobs.errors import InstanceNotFoundError, InvalidStateError
from durajobs.stores import open_store
from durajobs.stores.base import Write

JOBS = {
    "continuous": Continuous(state=int, schedule=every(60), execute=lambda ctx: None),
    "debounce": Debounce(event=int, execute=lambda ctx: None, flush_after=1),
    "task": Task(state=int, event=int, on_event=lambda e, ctx: None, execute=lambda ctx: None),
}


def stray(kind: str, status: str = "archived") -> Instance:
    """A row of ``kind`` in a status no table has (another version wrote it, or a person)."""
    return Instance(
        f"{kind}:job:u", kind, "job", "u", status, "1", T0 - 5, None, None, None, 0, 1, 0,
        T0 - 1000, None, None, 5, T0 - 1000,
    )  # fmt: skip


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_terminate_ends_a_row_in_an_unknown_status(kind: str) -> None:
    decision = run(JOBS[kind], stray(kind), Terminate("gone"), T0)
    assert decision.outcome is Outcome.TERMINATED
    assert decision.instance is None
    assert [r[0] for r in decision.records] == ["job.terminated"]


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_a_request_still_sets_the_alarm_of_a_row_in_an_unknown_status(kind: str) -> None:
    decision = run(JOBS[kind], stray(kind), Request("trigger"), T0)
    assert decision.instance is not None
    assert decision.instance.due_at == T0


def test_clear_discards_a_batch_in_an_unknown_status() -> None:
    decision = run(JOBS["debounce"], stray("debounce"), Clear(), T0)
    assert decision.outcome is Outcome.CLEARED


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_resume_of_a_row_in_an_unknown_status_is_refused_as_before(kind: str) -> None:
    with pytest.raises(InvalidStateError, match="not 'failed'"):
        run(JOBS[kind], stray(kind), Resume(), T0)


def test_durajobs_terminate_ends_a_row_in_an_unknown_status(tmp_path: Path) -> None:
    db = str(tmp_path / "jobs.db")
    store = open_store(db)
    row = stray("task")
    store.commit([Write.step(row.instance_id, "job", "u", 0, row, new=True)], T0, 100)
    store.close()
    with Admin(db) as admin:
        assert admin.terminate(row.instance_id, "stuck").changed
        with pytest.raises(InstanceNotFoundError):
            admin.get(row.instance_id)


def _erred(status: str, attempt: int) -> Instance:
    return stray("continuous", status)._replace(attempt=attempt, last_error="RuntimeError: down")


def test_a_resumed_instance_does_not_read_as_failing_before_its_run() -> None:
    """Failing = running, attempt 1 and an error (a run failed after its retries, skipped): a
    resumed parked instance must not look so; the error stays in the history."""
    decision = run(JOBS["continuous"], _erred("failed", 3), Resume(), T0)
    assert decision.instance is not None
    assert (decision.instance.status, decision.instance.attempt) == ("running", 1)
    assert decision.instance.last_error is None


def test_a_request_keeps_a_failing_instance_failing_and_replaces_a_pending_retry() -> None:
    failing = run(JOBS["continuous"], _erred("running", 1), Request("trigger"), T0)
    assert failing.instance is not None
    assert failing.instance.last_error == "RuntimeError: down"  # until a run succeeds
    retrying = run(JOBS["continuous"], _erred("running", 2), Request("trigger"), T0)
    assert retrying.instance is not None
    assert (retrying.instance.attempt, retrying.instance.last_error) == (1, None)
