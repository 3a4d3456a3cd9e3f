"""The Debounce kind's steps: events folded into a batch, the batch flushed to ``execute``.

Theory of operation
-------------------
``add`` creates the instance with its first event (status ``debouncing``) or folds the event
into the batch with the reducer (``on_event``; none keeps the last event). The batch's window
closes ``flush_after`` after its first event (``trailing``: after its last, capped by
``max_wait``); the alarm is set then, or the batch flushes at once when it reaches
``max_events``. A flush runs ``execute`` on the batch and purges the instance: the next event
opens a new batch. Events that arrive while a flush runs are queued by the store (``Queued``)
and folded by the next step, in order; a batch never exceeds ``max_events``, what is left waits
in the queue for the next one. ``flush`` flushes now (reason ``"manual"``), ``clear`` discards
the batch and its queue. A failed flush keeps the batch and takes the shared failure path
(``decision._failure``): retry alarms, then ``on_error``, then terminate or park. A reducer
that fails on a queued event fails the step the same way; one that fails on the event being
added raises to the caller (unless ``on_error`` takes it: the event is dropped).
"""

from __future__ import annotations

from typing import Any

from .codec import TypeCodec
from .contexts import DebounceContext, DebounceEventContext, _StateContext
from .decision import (
    NOTHING,
    Add,
    Alarm,
    Clear,
    Decision,
    Env,
    Flush,
    Outcome,
    TimedOut,
    _call,
    _commit_state,
    _failure,
    _next,
    _purge,
    _record,
    _with_state,
    is_due,
    refused,
    stale,
)
from .definitions import Debounce
from .rows import Instance, Record, Status

_EMPTY = Decision(None, Outcome.NOTHING, flush_reason="empty")  # no batch: nothing to flush


def add(job: Debounce, inst: Instance | None, msg: Add, env: Env) -> Decision:
    """Fold the event into the batch (a new instance for the first); flush at ``max_events``."""
    return _fold(job, inst, env, msg)


def flush(job: Debounce, inst: Instance | None, msg: Flush, env: Env) -> Decision:
    """Flush the batch now (reason ``"manual"``), after folding what is queued."""
    if inst is None:
        return _EMPTY
    return _fold(job, inst, env, None, flush="manual")


def alarm(job: Debounce, inst: Instance, msg: Alarm | TimedOut, env: Env) -> Decision:
    """The alarm is due (or the daemon stopped its flush: ``TimedOut``)."""
    if stale(msg, inst) or not is_due(inst, env.now):
        return NOTHING
    if isinstance(msg, TimedOut):
        return _fold(job, inst, env, None, flush=inst.reason or "flush_after", timed_out=msg)
    reason = inst.reason
    if reason is None and inst.attempt == 1:
        # A window alarm, or a wake-up to fold events queued behind a running flush.
        return _fold(job, inst, env, None, flush="flush_after?")
    return _fold(job, inst, env, None, flush=reason or "flush_after")


def clear(job: Any, inst: Instance, msg: Clear, env: Env) -> Decision:
    """Discard the batch (and its queued events) without running execute (no handler runs:
    the CLI clears without the job's definition)."""
    return _purge(
        inst, inst.state, [], "debounce.cleared", inst.attempt, "cleared",
        outcome=Outcome.CLEARED, consumed=env.queued[-1].seq if env.queued else 0,
        event_count=inst.event_count + len(env.queued),
    )  # fmt: skip


def flush_time(job: Debounce, started_at: float, last_event_at: float) -> float:
    """When a batch flushes: ``flush_after`` after its first event, or (``trailing``) after its
    last event, capped by ``max_wait`` from the first."""
    if not job.trailing:
        return started_at + job.flush_after
    due = last_event_at + job.flush_after
    if job.max_wait is not None:
        due = min(due, started_at + job.max_wait)
    return due


def _fold(
    job: Debounce,
    inst: Instance | None,
    env: Env,
    add: Add | None,
    *,
    flush: str | None = None,
    timed_out: TimedOut | None = None,
) -> Decision:
    """Fold queued events (and the added one) into the batch; then maybe flush it.

    ``flush``: ``"manual"``, a retry's reason, ``"flush_after"``; ``"flush_after?"`` flushes only
    when the window is over (an alarm that may have been a fold-only wake-up).
    """
    now = env.now
    created = inst is None
    if inst is None:
        inst = Instance(
            env.instance_id, "debounce", env.job_name, env.user_id, Status.DEBOUNCING, None,
            None, None, None, None, 0, 1, 0, now, None, None, env.base_step, now,
        )  # fmt: skip
    codec = env.state_codec
    event_codec = env.event_codec
    assert event_codec is not None
    count = inst.event_count
    started_at = inst.started_at
    window = inst.scheduled_for
    value: Any = None
    touched = False
    records: list[Record] = []
    step_no = inst.step + 1
    reducer = job.on_event

    # (event, added_at, seq): queued events (seq > 0, still encoded) first, then the added one
    items: list[tuple[Any, float, int]] = [(q.event, q.added_at, q.seq) for q in env.queued]
    if add is not None:
        items.append((add.event, now, 0))
    consumed = 0
    requeue: list[tuple[Any, float, int]] = []
    cap = job.max_events
    for index, (item, added_at, seq) in enumerate(items):
        if cap is not None and count >= cap:
            # A batch never exceeds max_events: the rest waits for the next batch (the added
            # event goes to the queue, folded by the next step like any queued event).
            requeue = items[index:]
            break
        encoded = seq > 0
        event = item
        if encoded:
            try:
                event = event_codec.decode(item, f"queued event of {inst.instance_id}")
            except Exception as exc:  # an old event that no longer fits its type
                return _fold_failed(job, inst, env, exc, records, add, flush)
        if reducer is None:
            value = event
        else:
            args = (inst, step_no, codec, event, count, value if touched else _KEEP)
            reduced, error = _call(reducer, _event_ctx(*args))
            if error is not None:
                if encoded:
                    return _fold_failed(job, inst, env, error, records, add, flush)
                if job.on_error is None:
                    return refused(error)
                # on_error handles the reducer's error in the call: the event is dropped and
                # what on_error leaves in ctx.state commits.
                handler_ctx = _event_ctx(*args)
                _, handler_error = _call(job.on_error, error, handler_ctx)
                if handler_error is not None:
                    return refused(handler_error)
                records.append(_record("job.failed", 1, None, error, handler="on_event"))
                if handler_ctx.touched() and count > 0:
                    value = handler_ctx.state
                continue
            value = reduced
        if count == 0:
            started_at = added_at
            records.append(_record("debounce.started", 1))
        touched = True
        count += 1
        consumed = max(consumed, seq)
        assert started_at is not None
        window = flush_time(job, started_at, added_at)

    state = inst.state
    kept_added = add is not None and value is add.event and value is not None
    if touched and kept_added and reducer is None and codec is event_codec:
        # The default reducer kept the added event as the state, untouched by user code: its
        # text, encoded and checked by the caller, is what encoding it again would give.
        state = add.text  # type: ignore[union-attr]
    elif touched:
        try:
            state = None if value is None else codec.encode(value, f"state of {inst.instance_id}")
        except Exception as exc:  # the reducer's result does not fit the state type
            if add is not None:
                return refused(exc)
            return _fold_failed(job, inst, env, exc, records, add, flush)
    if not requeue and env.queued:
        consumed = env.queued[-1].seq  # including events on_error dropped
    folded = _next(inst, now, state=state, event_count=count, started_at=started_at,
                   scheduled_for=window)  # fmt: skip

    if count == 0:
        # Nothing to flush (e.g. an empty wake-up, or a manual flush of an empty batch).
        if created:
            return _EMPTY
        return Decision(None, records=[], consumed=consumed, flush_reason="empty")
    if flush == "flush_after?":
        flush = "flush_after" if window is not None and window <= now else None
    if flush is None and job.max_events is not None and count >= job.max_events:
        flush = "max_events"
    if flush is None or (folded.status == Status.FAILED and flush != "manual"):
        due = folded.due_at if folded.attempt > 1 and folded.due_at is not None else window
        if folded.reason == "manual" and folded.due_at is not None and due is not None:
            due = min(due, folded.due_at)  # a flush the CLI requested stays due now
        if folded.status == Status.FAILED:
            due = None
        successor = folded._replace(due_at=due)
        decision = Decision(
            successor, records=records, consumed=consumed, event_count=count, created=created
        )
    else:
        decision = _flush(job, folded, env, flush, records, timed_out)._replace(
            consumed=consumed, created=created, event_count=count
        )
    if requeue:
        decision = decision._replace(
            requeued=len(requeue),
            next_window=flush_time(job, requeue[0][1], requeue[-1][1]),
            requeue=add.text if add is not None and requeue[-1][2] == 0 else decision.requeue,
        )
    return decision


_KEEP: Any = object()


def _event_ctx(
    inst: Instance, step_no: int, codec: TypeCodec, event: Any, count: int, value: Any
) -> DebounceEventContext[Any]:
    """The reducer's context: the batch so far (``None`` for the first event of a batch).

    ``value`` is the state folded so far in this step, or ``_KEEP`` for the stored one.
    """
    raw = None if count == 0 else inst.state
    ctx: DebounceEventContext[Any] = DebounceEventContext(
        inst.instance_id, inst.job, inst.user_id, step_no, codec, raw,
        event=event, event_count=count + 1,
    )  # fmt: skip
    if count > 0 and value is not _KEEP:
        ctx.state = value
    return ctx


def _fold_failed(
    job: Debounce, inst: Instance, env: Env, error: BaseException, records: list[Record],
    add: Add | None = None, flush: str | None = None,
) -> Decision:  # fmt: skip
    """A reducer failed on a queued event: the step fails, the events stay queued.

    An event being added in this call joins the queue behind them (it is acknowledged, so it
    must be stored); a manual flush reports itself as failed, not as empty.
    """

    def handled(ctx: _StateContext[Any]) -> Decision:
        # on_error dealt with it: drop the queued events it could not fold.
        state, state_error = _commit_state(ctx)
        if state_error is not None:  # on_error's state does not fit: the policy applies
            return refused(state_error)
        successor = _next(inst, env.now, state=state, due_at=inst.scheduled_for)
        return Decision(successor, consumed=env.queued[-1].seq if env.queued else 0)

    this_step = inst._replace(step=inst.step + 1)  # so on_error's ctx.step_key is this step's
    decision = _failure(
        job, inst, error, env, records=records, attempt=inst.attempt, duration=None,
        handled=handled, fresh_ctx=lambda: _debounce_ctx(job, this_step, env, "flush_after"),
    )  # fmt: skip
    if add is not None:
        decision = decision._replace(requeue=add.text, requeued=len(env.queued) + 1)
    if flush is not None and flush != "flush_after?":
        count = inst.event_count + len(env.queued)
        decision = decision._replace(flush_reason=flush, event_count=count)
    return decision


def _debounce_ctx(job: Debounce, inst: Instance, env: Env, reason: str) -> DebounceContext[Any]:
    return DebounceContext(
        inst.instance_id, inst.job, inst.user_id, inst.step, env.state_codec, inst.state,
        event_count=inst.event_count, flush_reason=reason,
        started_at=inst.started_at if inst.started_at is not None else env.now,
        attempt=inst.attempt,
    )  # fmt: skip


def _flush(
    job: Debounce,
    batch: Instance,
    env: Env,
    reason: str,
    records: list[Record],
    timed_out: TimedOut | None,
) -> Decision:
    """Run execute on the folded batch ``batch`` (whose step is already bumped)."""
    attempt = batch.attempt
    base = batch._replace(step=batch.step - 1)  # the failure path bumps it again

    def flushed(
        ctx: _StateContext[Any], recs: list[Record], duration: float | None,
        after_error: bool = False,
    ) -> Decision:  # fmt: skip
        state, error = _commit_state(ctx)
        if error is not None:
            if after_error:  # on_error's state: _failure applies the policy
                return refused(error)
            return fail(error, None)
        if ctx.terminated:
            return _purge(
                batch, state, recs, "job.terminated", attempt, ctx.terminate_reason,
                flushed=True, flush_reason=reason,
            )  # fmt: skip
        ms = None if duration is None else round(duration * 1000.0, 3)
        data = _with_state({"reason": reason, "event_count": batch.event_count}, state)
        recs.append(("debounce.flushed", attempt, ms, None, data))
        return Decision(None, records=recs, flushed=True, flush_reason=reason)

    def fail(error: BaseException, duration: float | None) -> Decision:
        return _failure(
            job, base, error, env, records=records, attempt=attempt, duration=duration,
            handled=lambda ctx: flushed(ctx, [], None, after_error=True),
            fresh_ctx=lambda: _debounce_ctx(job, batch, env, reason),
            state=batch.state, event_count=batch.event_count, started_at=batch.started_at,
            scheduled_for=batch.scheduled_for, reason=reason,
        )._replace(flush_reason=reason)  # fmt: skip

    if timed_out is not None:
        return fail(TimeoutError(f"step stopped after {timed_out.seconds:g} s"), None)
    ctx = _debounce_ctx(job, batch, env, reason)
    started = env.timer()
    _, error = _call(job.execute, ctx)
    duration = env.timer() - started
    if error is not None:
        return fail(error, duration)
    return flushed(ctx, records, duration)
