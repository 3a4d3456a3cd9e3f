"""Helpers of the table-driven tests of the pure core (tests/test_core_*.py).

A row of those tables is ``(label, job, instance before, message, now)`` ->
``(status after, alarm after, the records' events, outcome)``: the step runs on values alone,
with no file, lock, clock or engine.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from durajobs import Retry
from durajobs.core import steps
from durajobs.core.codec import Codec
from durajobs.core.decision import Decision, Env, Message, Outcome
from durajobs.core.definitions import Definition
from durajobs.core.rows import Instance, Queued, Status

T0 = 1_000_000.0  # "now" in the tables
INTS = Codec().for_type(int)
RETRY = Retry(max_attempts=3, delay=1.0)  # a retry 1 s after a failure (no jitter)


def row(kind: str, status: Status, **fields: Any) -> Instance:
    """An instance of ``kind`` as the store would hand it to a step (step 5, state ``1``)."""
    values: dict[str, Any] = {
        "instance_id": f"{kind}:job:u", "kind": kind, "job": "job", "user_id": "u",
        "status": str(status), "state": "1", "due_at": None, "scheduled_for": None,
        "anchor": None, "reason": None, "run_count": 0, "attempt": 1, "event_count": 0,
        "created_at": T0 - 1000, "started_at": None, "last_error": None, "step": 5,
        "updated_at": T0 - 1000,
    }  # fmt: skip
    values.update(fields)
    return Instance(**values)


def env(job: Definition, now: float, queued: tuple[Queued, ...] = ()) -> Env:
    return Env(f"{job.kind}:job:u", "job", "u", now, 0.5, lambda: 0.0, INTS, INTS, queued, 0)


class After(NamedTuple):
    """What a step left: the successor's status and alarm, the events recorded, the outcome."""

    status: str | None
    alarm: float | None
    events: tuple[str, ...]
    outcome: Outcome


class Case(NamedTuple):
    label: str
    job: Definition
    before: Instance | None
    msg: Message
    now: float
    after: After


def run(job: Definition, before: Instance | None, msg: Message, now: float) -> Decision:
    return steps.step(job, before, msg, env(job, now))


def summary(decision: Decision) -> After:
    successor = decision.instance
    return After(
        None if successor is None else successor.status,
        None if successor is None else successor.due_at,
        tuple(record[0] for record in decision.records),
        decision.outcome,
    )


def check(case: Case) -> Decision:
    """Run the case's step and compare what it left with the table's expectation."""
    decision = run(case.job, case.before, case.msg, case.now)
    assert summary(decision) == case.after, case.label
    if decision.instance is not None and case.before is not None:
        assert decision.instance.step == case.before.step + 1  # the fencing token moves on
    assert decision.changed is (case.after.outcome not in (Outcome.NOTHING, Outcome.REFUSED))
    return decision


def boom(*_: Any) -> None:
    raise RuntimeError("boom")


class Calls:
    """A handler that counts its calls (a refused message must run none)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_: Any) -> None:
        self.count += 1
