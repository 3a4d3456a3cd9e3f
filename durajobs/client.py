"""Typed clients: ``jobs.continuous(name)``, ``jobs.debounce(name)``, ``jobs.task(name)``.

Each call turns into one step on one instance through the engine (or, for reads, one query).
Results are frozen attrs values; times are aware UTC datetimes or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import attrs

from .admin import is_failing
from .core import steps
from .core.definitions import Continuous, Debounce, Definition, Task
from .core.durations import to_datetime as _dt
from .core.steps import Instance
from .engine import Engine, instance_id_of
from .errors import DuplicateEventError, InstanceNotFoundError, ValidationError

__all__ = [
    "AddResult",
    "ClearResult",
    "ContinuousClient",
    "ContinuousStatus",
    "DebounceClient",
    "DebounceStatus",
    "FlushResult",
    "OnDuplicate",
    "ResumeResult",
    "SendResult",
    "StartResult",
    "TaskClient",
    "TaskStatus",
    "TaskTriggerResult",
    "TerminateResult",
    "TriggerResult",
]

S = TypeVar("S")
E = TypeVar("E")
OnDuplicate = Literal["raise", "skip"]  # bulk calls: what an item whose key was taken does


@attrs.frozen
class StartResult:
    instance_id: str
    created: bool
    status: str
    retry_scheduled: bool = False


@attrs.frozen
class TriggerResult:
    """``triggered``: the run happened (``False``: no such instance). ``error``: the run's
    failure (the handler's traceback text), or ``None`` when it succeeded; then
    ``retry_scheduled`` says a retry alarm is set, and ``terminated`` that the instance ended
    (the ``"terminate"`` policy, or ``ctx.terminate()``)."""

    triggered: bool
    terminated: bool = False
    retry_scheduled: bool = False
    error: str | None = None


@attrs.frozen
class ContinuousStatus:
    """``failing``: the last run failed after its retries and was skipped (``on_exhausted=
    "skip"``); the instance stays ``"running"`` on its schedule, and ``failing`` until a run
    succeeds (``last_error`` is that run's error)."""

    status: str
    run_count: int = 0
    next_run_at: datetime | None = None
    attempt: int = 1
    last_error: str | None = None
    failing: bool = False
    paused: bool = False  # the instance or its job is paused: no alarm step runs


@attrs.frozen
class TerminateResult:
    terminated: bool
    reason: str | None = None


@attrs.frozen
class ResumeResult:
    instance_id: str
    resumed: bool
    due_at: datetime | None


@attrs.frozen
class PauseResult:
    """``pause``/``resume`` of a job or an instance: ``target`` is the job's name or the
    instance id, ``paused`` its state now, ``changed`` whether the call changed it."""

    target: str
    paused: bool
    changed: bool


@attrs.frozen
class AddResult:
    instance_id: str
    created: bool
    event_count: int
    will_flush_at: datetime | None
    skipped: bool = False  # add_many(on_duplicate="skip"): the key was taken, nothing changed


@attrs.frozen
class FlushResult:
    flushed: bool
    event_count: int
    reason: str
    error: str | None = None


@attrs.frozen
class ClearResult:
    cleared: bool
    discarded_events: int = 0


@attrs.frozen
class DebounceStatus:
    status: str
    event_count: int = 0
    started_at: datetime | None = None
    will_flush_at: datetime | None = None
    attempt: int = 1
    last_error: str | None = None
    paused: bool = False  # the instance or its job is paused: no alarm step runs


@attrs.frozen
class SendResult:
    instance_id: str
    created: bool
    scheduled_at: datetime | None
    skipped: bool = False  # send_many(on_duplicate="skip"): the key was taken, nothing changed


@attrs.frozen
class TaskTriggerResult:
    """As ``TriggerResult``: ``error`` is the failure of the ``execute`` that ran (``None``
    when it succeeded)."""

    triggered: bool
    terminated: bool = False
    retry_scheduled: bool = False
    error: str | None = None


@attrs.frozen
class TaskStatus:
    status: str
    scheduled_at: datetime | None = None
    created_at: datetime | None = None
    event_count: int = 0
    execute_count: int = 0
    attempt: int = 1
    last_error: str | None = None
    paused: bool = False  # the instance or its job is paused: no alarm step runs


D = TypeVar("D", bound=Definition)


def _check_text(text: str, instance_id: str, what: str) -> None:
    """Ids, keys and reasons are stored as text: refuse what no store can hold.

    Raises:
        ValidationError: ``text`` holds a lone surrogate or a NUL character.
    """
    if "\x00" in text:
        raise ValidationError(f"{steps.safe_text(instance_id)}: {what} contains a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError(
                f"{steps.safe_text(instance_id)}: {what} is not valid text ({exc.reason} at "
                f"position {exc.start}: {steps.safe_text(text[exc.start : exc.end])!s})"
            ) from None


def _bulk_items(items: Iterable[Any], what: str) -> list[tuple[str, Any, str | None]]:
    """``(id, value)`` or ``(id, value, key)`` items as triples, checked.

    Raises:
        TypeError: an item is not such a tuple (the message names its index).
    """
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise TypeError(f"{what} takes an iterable of (id, value) or (id, value, key) tuples")
    triples: list[tuple[str, Any, str | None]] = []
    for index, item in enumerate(items):
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise TypeError(
                f"{what}: item {index} must be (id, value) or (id, value, key), got {item!r}"
            )
        triples.append((item[0], item[1], item[2] if len(item) == 3 else None))
    return triples


def _skip_duplicates(on_duplicate: str) -> bool:
    """
    Raises:
        ValueError: ``on_duplicate`` is neither ``"raise"`` nor ``"skip"``.
    """
    if on_duplicate not in ("raise", "skip"):
        raise ValueError(f"on_duplicate must be 'raise' or 'skip', got {on_duplicate!r}")
    return on_duplicate == "skip"


def _item_error(index: int, instance_id: str, exc: BaseException) -> BaseException:
    """The same error, its message naming the bulk item (for errors raised before a step)."""
    text = f"item {index} ({instance_id}): {exc}; nothing of the batch was stored"
    try:
        return type(exc)(text)
    except Exception:  # an error type with another constructor: keep the original
        return exc


def _check_key(key: str | None, instance_id: str) -> None:
    """
    Raises:
        TypeError: ``key`` is not a str or None.
        ValidationError: ``key`` is empty or not valid text.
    """
    if key is None:
        return
    if not isinstance(key, str):
        raise TypeError(f"{instance_id}: key must be a str or None, got {key!r}")
    if not key:
        raise ValidationError(f"{instance_id}: key must not be empty")
    _check_text(key, instance_id, "key")


class _Client(Generic[D]):
    kind: str

    def __init__(self, engine: Callable[[], Engine], name: str, job: D) -> None:
        # ``Jobs.engine``: the calling thread's engine (checks that Jobs is open)
        self._engine_of = engine
        self.name = name
        self.job = job

    @property
    def _engine(self) -> Engine:
        return self._engine_of()

    def _id(self, user_id: str) -> str:
        if not isinstance(user_id, str) or not user_id:
            raise TypeError(f"an instance id must be a non-empty str, got {user_id!r}")
        instance_id = instance_id_of(self.kind, self.name, user_id)
        _check_text(user_id, instance_id, "id")
        return instance_id

    def _load(self, user_id: str) -> Instance | None:
        return self._engine.store.load(self._id(user_id))

    def _step(self, user_id: str, msg: steps.Message, **kw: Any) -> steps.Decision:
        self._id(user_id)
        outcome = self._engine.run(self.kind, self.name, user_id, msg, job=self.job, **kw)
        assert outcome is not None
        assert outcome.decision is not None
        return outcome.decision

    def _state(self, user_id: str) -> Any:
        engine = self._engine
        inst = engine.store.load(self._id(user_id))
        return None if inst is None else engine.state_of(self.name, inst)

    def _bulk_calls(
        self,
        triples: list[tuple[str, Any, str | None]],
        what: str,
        codec: Any,
        message: Callable[[Any, str], steps.Message],
        *,
        keyed: bool = True,
    ) -> list[tuple[str, steps.Message, str | None]]:
        """Check and encode every item of a bulk call before anything runs.

        Raises:
            TypeError: an item's id or key has the wrong type (the message names the item).
            ValidationError: an item's value does not fit its type (the item named).
        """
        calls: list[tuple[str, steps.Message, str | None]] = []
        for index, (user_id, value, key) in enumerate(triples):
            try:
                instance_id = self._id(user_id)
                if not keyed and key is not None:
                    raise TypeError("items are (id, state): no key")
                _check_key(key, instance_id)
                text = codec.encode(value, f"{what} {instance_id}")
            except (TypeError, ValidationError) as exc:
                raise _item_error(index, repr(user_id), exc) from None
            calls.append((user_id, message(value, text), key))
        return calls

    def _terminate(self, user_id: str, reason: str | None) -> TerminateResult:
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError(f"reason must be a str or None, got {reason!r}")
            _check_text(reason, self._id(user_id), "reason")
        decision = self._step(user_id, steps.Terminate(reason))
        return TerminateResult(decision.changed, reason if decision.changed else None)

    def pause(self, user_id: str) -> PauseResult:
        """Pause the instance: no alarm step of it runs (across every process and host) until
        ``resume``; its alarm and its stored events are kept, and client calls still work
        (a paused instance can be terminated). The id stays paused if it is started anew.

        Raises:
            StorageError: the database failed.
        """
        return _set_paused(self._engine, self._id(user_id), True)

    def resume(self, user_id: str) -> PauseResult:
        """Resume a paused instance: alarms missed meanwhile are due now and follow the
        job's catch-up rules (``catch_up`` for Continuous; a Debounce flush or a Task
        ``execute`` runs once). A job that is paused keeps its instances paused.

        Raises:
            StorageError: the database failed.
        """
        return _set_paused(self._engine, self._id(user_id), False)

    def _paused(self, inst: Instance) -> bool:
        return self._engine.store.is_paused(inst.instance_id, self.name)

    def retry(self, user_id: str) -> ResumeResult:
        """Resume a parked (``"failed"``) instance: its work is due now, with fresh attempts.

        Raises:
            InstanceNotFoundError: no such instance.
            InvalidStateError: the instance is not parked.
            InstanceBusyError: another step held it past ``wait_timeout``.
            StorageError: the database failed.
        """
        try:
            decision = self._step(user_id, steps.Resume())
        except InstanceNotFoundError:
            raise InstanceNotFoundError(f"{self._id(user_id)}: no such instance") from None
        row = decision.instance
        return ResumeResult(self._id(user_id), True, _dt(row.due_at if row else None))


class ContinuousClient(_Client[Continuous], Generic[S]):
    """Client of one Continuous job."""

    kind = "continuous"

    def start(self, user_id: str, state: S) -> StartResult:
        """Create the instance with its initial state (no-op if it exists).

        With ``start_immediately`` the first run happens here, before this returns; a failing
        first run does not raise (see ``retry_scheduled`` and ``status().last_error``).

        Raises:
            ValidationError: ``state`` does not fit the job's state type.
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            StorageError: the database failed.
        """
        instance_id = self._id(user_id)
        text = self._engine.codecs(self.name)[0].encode(state, f"initial state of {instance_id}")
        decision = self._step(user_id, steps.Start(text))
        if not decision.changed:
            return StartResult(instance_id, False, self.status(user_id).status)
        status = "not_found" if decision.instance is None else decision.instance.status
        return StartResult(instance_id, True, status, decision.retry_scheduled)

    def start_many(self, items: Iterable[tuple[str, S]]) -> list[StartResult]:
        """Start many instances in ONE transaction (one fsync): ``(id, state)`` items.

        Each item is its own ``start`` (first runs with ``start_immediately`` happen here,
        outside the transaction); the results are ``start``'s, in order. All or nothing: if
        an item fails validation nothing is stored and the error names the item. At most
        ``BULK_MAX_INSTANCES`` (2,000) distinct ids per call: split larger sets.

        Raises:
            TypeError: an item is not an ``(id, state)`` tuple.
            ValidationError: an item's state does not fit the state type (index and id named),
                or the items name more than 2,000 distinct ids (nothing ran).
            InstanceBusyError: another step held an instance past ``wait_timeout``.
            StorageError: the database failed; nothing was stored.
        """
        triples = _bulk_items(items, "start_many")
        engine = self._engine
        calls = self._bulk_calls(
            triples, "initial state of", engine.codecs(self.name)[0],
            lambda state, text: steps.Start(text), keyed=False,
        )  # fmt: skip
        outcomes = engine.run_many(self.kind, self.name, self.job, calls)
        results = []
        for (user_id, _, _), outcome in zip(triples, outcomes, strict=True):
            instance_id = instance_id_of(self.kind, self.name, user_id)
            decision, before = outcome.decision, outcome.before
            assert decision is not None
            if not decision.changed:
                status = before.status if isinstance(before, Instance) else "not_found"
                results.append(StartResult(instance_id, False, status))
                continue
            status = "not_found" if decision.instance is None else decision.instance.status
            results.append(StartResult(instance_id, True, status, decision.retry_scheduled))
        return results

    def trigger(self, user_id: str) -> TriggerResult:
        """Run now and restart the schedule from now. A missing instance: ``triggered=False``.

        A failing run does not raise: ``triggered=True`` (it ran) with its ``error``, and the
        retry rules apply (``retry_scheduled``; with ``on_exhausted="skip"`` the instance is
        then ``failing``, see ``status()``).

        Raises:
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            ValidationError: the stored state cannot be read by this code (it no longer
                fits the state type, was written by a newer version, or a migration failed);
                nothing runs and nothing is written (the daemon's alarm step parks such an
                instance instead).
            StorageError: the database failed.
        """
        decision = self._step(user_id, steps.Trigger())
        if not decision.changed:
            return TriggerResult(False)
        return TriggerResult(True, decision.terminated, decision.retry_scheduled, decision.error)

    def status(self, user_id: str) -> ContinuousStatus:
        """The instance's status; ``status="not_found"`` when it does not exist.

        Raises:
            StorageError: the database cannot be read.
        """
        inst = self._load(user_id)
        if inst is None:
            return ContinuousStatus("not_found")
        return ContinuousStatus(
            inst.status, inst.run_count, _dt(inst.due_at), inst.attempt, inst.last_error,
            is_failing(inst.kind, inst.status, inst.attempt, inst.last_error), self._paused(inst),
        )  # fmt: skip

    def get_state(self, user_id: str) -> S | None:
        """The current state, or ``None`` when the instance does not exist.

        Raises:
            ValidationError: the stored state cannot be read by this code (it no longer
                fits the state type, was written by a newer version, or a migration failed);
                nothing is written.
            StorageError: the database cannot be read.
        """
        return self._state(user_id)  # type: ignore[no-any-return]

    def terminate(self, user_id: str, reason: str | None = None) -> TerminateResult:
        """Cancel the alarm and purge the instance (history keeps the final state).

        Raises:
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            StorageError: the database failed.
        """
        return self._terminate(user_id, reason)


class DebounceClient(_Client[Debounce], Generic[E, S]):
    """Client of one Debounce job."""

    kind = "debounce"

    def add(self, user_id: str, event: E, *, key: str | None = None) -> AddResult:
        """Add an event to the instance's current batch (creating the instance).

        Never waits for a running flush of the same instance: the event is stored at once and
        belongs to the next batch. When the reducer runs here and raises, nothing is stored.

        Raises:
            ValidationError: ``event`` does not fit the job's event type.
            DuplicateEventError: ``key`` was already accepted for this instance.
            ExecutionError: the reducer raised (and there is no ``on_error``).
            StorageError: the database failed.
        """
        instance_id = self._id(user_id)
        _check_key(key, instance_id)
        engine = self._engine
        text = engine.codecs(self.name)[1].encode(event, f"event for {instance_id}")  # type: ignore[union-attr]
        # Checked again inside the commit; asking first spares the handler a duplicate.
        if key is not None and engine.store.has_key(instance_id, key, engine.clock.time()):
            raise DuplicateEventError(
                f"{instance_id}: an event with key {key!r} was already accepted"
            )
        outcome = engine.run(
            self.kind, self.name, user_id, steps.Add(event, text), queue_busy=True, key=key,
            job=self.job,
        )  # fmt: skip
        assert outcome is not None
        if outcome.added is not None:  # queued behind a running flush, for the next batch
            will_flush = steps.flush_time(self.job, *outcome.added)
            return AddResult(instance_id, False, outcome.queued, _dt(will_flush))
        assert outcome.decision is not None
        return _add_result(instance_id, outcome.decision, outcome.before)

    def add_many(
        self,
        items: Iterable[tuple[str, E] | tuple[str, E, str | None]],
        *,
        on_duplicate: OnDuplicate = "raise",
    ) -> list[AddResult]:
        """Add many events in ONE transaction (one fsync): ``(id, event)`` or
        ``(id, event, key)`` items.

        Each item is its own ``add`` (reducers, and flushes at ``max_events``, run here,
        outside the transaction); items for one id apply in order; the results are ``add``'s,
        in order. Never waits for a running flush: an instance busy elsewhere gets its events
        queued for its next batch. All or nothing: if an item's reducer raises (without
        ``on_error``), its key is a duplicate or it fails validation, nothing is stored and the
        error names the item (its index and id). With ``on_duplicate="skip"`` an item whose
        key was already accepted (or repeats one earlier in the call) is skipped instead: its
        result has ``skipped=True``, ``created=False``, ``event_count=0`` and no flush time,
        and the other items are stored. At most ``BULK_MAX_INSTANCES`` (2,000) distinct ids per
        call (items for one id count once): split larger imports into several calls.

        Raises:
            TypeError: an item is not such a tuple.
            ValueError: ``on_duplicate`` is neither ``"raise"`` nor ``"skip"``.
            ValidationError: an item's event does not fit the event type, or the items name
                more than 2,000 distinct ids (nothing ran).
            DuplicateEventError: an item's key was already accepted (or repeats in the batch),
                with ``on_duplicate="raise"``.
            ExecutionError: an item's reducer raised (and there is no ``on_error``).
            StorageError: the database failed; nothing was stored.
        """
        skip = _skip_duplicates(on_duplicate)
        triples = _bulk_items(items, "add_many")
        engine = self._engine
        calls = self._bulk_calls(triples, "event for", engine.codecs(self.name)[1], steps.Add)
        outcomes = engine.run_many(
            self.kind, self.name, self.job, calls, queue_busy=True, skip_duplicates=skip
        )
        # Events queued behind a running flush: this call's are the last ``added`` of the queue
        # read after the commit; each result counts the queue as of its own event.
        added: dict[str, int] = {}
        for (user_id, _, _), outcome in zip(triples, outcomes, strict=True):
            if outcome.queued:
                added[user_id] = max(added.get(user_id, 0), outcome.queued)
        queues = {u: engine.store.queued(self._id(u)) for u in added}
        results: list[AddResult] = []
        for (user_id, _, _), outcome in zip(triples, outcomes, strict=True):
            instance_id = instance_id_of(self.kind, self.name, user_id)
            if outcome.skipped:
                results.append(AddResult(instance_id, False, 0, None, skipped=True))
            elif outcome.decision is None:
                queue = queues[user_id]
                count = len(queue) - added[user_id] + outcome.queued
                first, last = queue[0].added_at, queue[max(count, 1) - 1].added_at
                will_flush = _dt(steps.flush_time(self.job, first, last))
                results.append(AddResult(instance_id, False, count, will_flush))
            else:
                results.append(_add_result(instance_id, outcome.decision, outcome.before))
        return results

    def flush(self, user_id: str) -> FlushResult:
        """Flush the batch now (reason ``"manual"``); an empty batch reports ``"empty"``.

        A failing ``execute`` does not raise: ``flushed=False`` with the error, and the retry
        policy applies.

        Raises:
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            StorageError: the database failed.
        """
        decision = self._step(user_id, steps.Flush())
        if decision.flush_reason == "empty" or decision.flush_reason is None:
            return FlushResult(False, 0, "empty")
        return FlushResult(
            decision.flushed, decision.event_count, decision.flush_reason, decision.error
        )

    def clear(self, user_id: str) -> ClearResult:
        """Discard the batch without running ``execute``.

        Raises:
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            StorageError: the database failed.
        """
        decision = self._step(user_id, steps.Clear())
        return ClearResult(decision.changed, decision.event_count)

    def status(self, user_id: str) -> DebounceStatus:
        """The batch's status; ``status="not_found"`` when there is none.

        Raises:
            StorageError: the database cannot be read.
        """
        inst, queued = self._engine.store.load_with_queue(self._id(user_id))
        if inst is None:
            return DebounceStatus("not_found")
        # a retry's alarm, or a flush that was asked for (manual, resumed), is the alarm
        asked = inst.attempt > 1 or inst.reason == "manual"
        will_flush = inst.due_at if asked else inst.scheduled_for
        started = inst.started_at
        if inst.event_count == 0 and queued:
            started = queued[0].added_at
            will_flush = steps.flush_time(self.job, started, queued[-1].added_at)
        return DebounceStatus(
            inst.status, inst.event_count + len(queued), _dt(started), _dt(will_flush),
            inst.attempt, inst.last_error, self._paused(inst),
        )  # fmt: skip

    def get_state(self, user_id: str) -> S | None:
        """The accumulated state of the current batch, or ``None``.

        Raises:
            ValidationError: the stored state cannot be read by this code (it no longer
                fits the state type, was written by a newer version, or a migration failed);
                nothing is written.
            StorageError: the database cannot be read.
        """
        return self._state(user_id)  # type: ignore[no-any-return]


def _add_result(instance_id: str, decision: steps.Decision, before: Instance | None) -> AddResult:
    if decision.requeued:  # the batch was full: this event opens the next one
        return AddResult(instance_id, before is None, decision.requeued, _dt(decision.next_window))
    row = decision.instance
    return AddResult(
        instance_id,
        before is None,
        decision.event_count,
        None if row is None else _dt(row.scheduled_for),
    )


class TaskClient(_Client[Task], Generic[E, S]):
    """Client of one Task job."""

    kind = "task"

    def send(self, user_id: str, event: E, *, key: str | None = None) -> SendResult:
        """Deliver an event: ``on_event`` runs here (then ``on_idle`` if no alarm is left).

        Raises:
            ValidationError: ``event`` does not fit the job's event type.
            DuplicateEventError: ``key`` was already accepted for this instance.
            ExecutionError: ``on_event`` raised and there is no ``on_error``; nothing changed.
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            StorageError: the database failed.
        """
        instance_id = self._id(user_id)
        _check_key(key, instance_id)
        engine = self._engine
        engine.codecs(self.name)[1].encode(event, f"event for {instance_id}")  # type: ignore[union-attr]
        # Checked again inside the commit; asking first spares the handler a duplicate.
        if key is not None and engine.store.has_key(instance_id, key, engine.clock.time()):
            raise DuplicateEventError(
                f"{instance_id}: an event with key {key!r} was already accepted"
            )
        outcome = engine.run(
            self.kind, self.name, user_id, steps.Send(event), key=key, job=self.job
        )
        assert outcome is not None
        assert outcome.decision is not None
        row = outcome.decision.instance
        return SendResult(
            instance_id, outcome.before is None, None if row is None else _dt(row.due_at)
        )

    def send_many(
        self,
        items: Iterable[tuple[str, E] | tuple[str, E, str | None]],
        *,
        on_duplicate: OnDuplicate = "raise",
    ) -> list[SendResult]:
        """Send many events in ONE transaction (one fsync): ``(id, event)`` or
        ``(id, event, key)`` items.

        Each item is its own ``send`` (``on_event`` and ``on_idle`` run here, outside the
        transaction); items for one id apply in order, each seeing the one before; the results
        are ``send``'s, in order. All or nothing: if an item's ``on_event`` raises (without
        ``on_error``), its key is a duplicate or it fails validation, nothing is stored and the
        error names the item (its index and id). With ``on_duplicate="skip"`` an item whose
        key was already accepted (or repeats one earlier in the call) is skipped instead (its
        ``on_event`` does not run): its result has ``skipped=True``, ``created=False`` and no
        ``scheduled_at``, and the other items are stored. At most ``BULK_MAX_INSTANCES``
        (2,000) distinct ids per call (items for one id count once): split larger imports into
        several calls.

        Raises:
            TypeError: an item is not such a tuple.
            ValueError: ``on_duplicate`` is neither ``"raise"`` nor ``"skip"``.
            ValidationError: an item's event does not fit the event type, or the items name
                more than 2,000 distinct ids (nothing ran).
            DuplicateEventError: an item's key was already accepted (or repeats in the batch),
                with ``on_duplicate="raise"``.
            ExecutionError: an item's ``on_event`` raised and there is no ``on_error``.
            InstanceBusyError: another step held an instance past ``wait_timeout``.
            StorageError: the database failed; nothing was stored.
        """
        skip = _skip_duplicates(on_duplicate)
        triples = _bulk_items(items, "send_many")
        engine = self._engine
        calls = self._bulk_calls(
            triples, "event for", engine.codecs(self.name)[1], lambda event, text: steps.Send(event)
        )
        outcomes = engine.run_many(self.kind, self.name, self.job, calls, skip_duplicates=skip)
        results = []
        for (user_id, _, _), outcome in zip(triples, outcomes, strict=True):
            instance_id = instance_id_of(self.kind, self.name, user_id)
            if outcome.decision is None:  # skipped (a task's events never queue)
                results.append(SendResult(instance_id, False, None, skipped=True))
                continue
            row = outcome.decision.instance
            results.append(
                SendResult(
                    instance_id, outcome.before is None, None if row is None else _dt(row.due_at)
                )
            )
        return results

    def trigger(self, user_id: str) -> TaskTriggerResult:
        """Run ``execute`` now (clearing any pending alarm). A missing instance: not triggered.

        A failing ``execute`` does not raise: ``triggered=True`` with its ``error``, and the
        retry rules apply (``retry_scheduled``).

        Raises:
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            ValidationError: the stored state cannot be read by this code (it no longer
                fits the state type, was written by a newer version, or a migration failed);
                nothing runs and nothing is written (the daemon's alarm step parks such an
                instance instead).
            StorageError: the database failed.
        """
        decision = self._step(user_id, steps.Trigger())
        if not decision.changed:
            return TaskTriggerResult(False)
        return TaskTriggerResult(
            True, decision.terminated, decision.retry_scheduled, decision.error
        )

    def status(self, user_id: str) -> TaskStatus:
        """The instance's status; ``status="not_found"`` when it does not exist.

        Raises:
            StorageError: the database cannot be read.
        """
        inst = self._load(user_id)
        if inst is None:
            return TaskStatus("not_found")
        return TaskStatus(
            inst.status, _dt(inst.due_at), _dt(inst.created_at), inst.event_count,
            inst.run_count, inst.attempt, inst.last_error, self._paused(inst),
        )  # fmt: skip

    def get_state(self, user_id: str) -> S | None:
        """The current state (``None`` before the first assignment or when missing).

        Raises:
            ValidationError: the stored state cannot be read by this code (it no longer
                fits the state type, was written by a newer version, or a migration failed);
                nothing is written.
            StorageError: the database cannot be read.
        """
        return self._state(user_id)  # type: ignore[no-any-return]

    def terminate(self, user_id: str, reason: str | None = None) -> TerminateResult:
        """Cancel the alarm and purge the instance (history keeps the final state).

        Raises:
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            StorageError: the database failed.
        """
        return self._terminate(user_id, reason)


def _set_paused(engine: Engine, target: str, paused: bool) -> PauseResult:
    """Pause or resume ``target`` (a job's name or an instance id); a resume wakes a daemon
    (what was held back may be due now).

    Raises:
        StorageError: the database failed.
    """
    changed = engine.store.set_paused(target, paused, engine.clock.time())
    if changed and not paused and engine.hooks.waker is not None:
        engine.hooks.waker.poke()
    return PauseResult(target, paused, changed)
