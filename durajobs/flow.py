"""Flow control in the engine: the gate a due step passes before its handlers run.

Theory of operation
-------------------
Built once, above the store: the store gives primitives (``Slots`` for ``concurrency``,
``StepStore.take_token`` for ``rate``, the ``paused`` table that due reads skip), and this
module decides. A due step of a limited job, once claimed and found due, is *admitted*:

1. ``concurrency=N``: it takes one of the job's N slots (``Slots.try_acquire``), held until
   its handlers have returned. None free: the step stays due and untouched (its due time,
   hence its place, unchanged) and the job is *held* for the rest of the call, with no
   known time to try again (a slot frees when some step ends, anywhere).
2. ``rate``: it takes a token of the job's shared bucket (``take_token``). None: the step
   stays due, and the job is held until the time the next token arrives.

A held job's other due steps are not even claimed in that call; ``run_due`` reports the held
instances to its caller (the daemon's worker, whose dispatcher then sleeps until the token
time, or until a slot may have freed) and reads past them, so a limited job never crowds out
the others. Client calls: ``trigger`` and ``flush`` wait for a slot (up to ``wait_timeout``)
and take no token; the inline steps of ``start``, ``send`` and ``add`` take neither.

Pause needs no gate: the store's due reads skip paused jobs and instances, and ``run_due``
filters the ids a daemon handed out (its read may predate the pause). Priority orders each
pass of ``run_due`` (higher first, stable: then as read, earliest due) and the dispatcher's
hand-outs (with aging: ``core.flow.prioritized``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .core.definitions import Definition
from .errors import InstanceBusyError, InvalidStateError
from .stores.base import Slots, StepStore

__all__ = ["Gate"]


class Gate:
    """The flow limits of one engine's registry (see the module's doc).

    ``open_slots`` opens the store's ``Slots`` on first need (no file or session otherwise).
    """

    def __init__(
        self, registry: Mapping[str, Definition], open_slots: Callable[[], Slots] | None
    ) -> None:
        self.limited = {
            name: job
            for name, job in registry.items()
            if job.concurrency is not None or job.rate is not None
        }
        self.priorities = {name: job.priority for name, job in registry.items() if job.priority}
        self._open_slots = open_slots
        self._slots: Slots | None = None
        # (job, token): the slot of a run_due step that just ended, kept for the next step if
        # it is of the same job (one lock, not two, per step of a burst of one job's steps);
        # given back before any other job's step runs, and when the call ends.
        self.kept: tuple[str, int] | None = None
        self._mine: dict[int, str] = {}  # slot token -> job: the slots this engine holds

    @property
    def slots(self) -> Slots:
        """The store's slots, opened on first use.

        Raises:
            StorageError: they cannot be opened.
        """
        if self._slots is None:
            assert self._open_slots is not None, "a limited job needs the store's slots"
            self._slots = self._open_slots()
        return self._slots

    def admit(
        self, store: StepStore, job_name: str, job: Any, clock: Any
    ) -> tuple[bool, int | None, float | None]:
        """Admit a due step of ``job_name``: ``(True, slot token or None, None)``; held,
        ``(False, None, when)``: ``when`` is the time the job's rate budget has a token
        again, or ``None`` when no slot is free (no time known).

        ``clock``'s time is read only for a rate.

        Raises:
            StorageError: the slot or the budget could not be asked.
        """
        token = None
        kept, self.kept = self.kept, None
        if kept is not None and kept[0] == job_name and job.concurrency is not None:
            token = kept[1]  # its previous step's slot: still ours
        elif kept is not None:
            self.leave(kept[1])
        if token is None and job.concurrency is not None:
            slots = self._slots or self.slots
            token = slots.try_acquire(job_name, job.concurrency)
            if token is None:
                return False, None, None
            self._mine[token] = job_name
        if job.rate is not None:
            try:
                retry_at = store.take_token(job_name, job.rate, clock.time())
            except BaseException:
                self.leave(token)
                raise
            if retry_at is not None:
                self.leave(token)
                return False, None, retry_at
        return True, token, None

    def wait_slot(self, instance_id: str, job_name: str, job: Any, timeout: float) -> int | None:
        """A slot for a client's ``trigger``/``flush`` of a job with ``concurrency``, waiting
        up to ``timeout`` seconds (``None`` for a job without).

        Raises:
            InvalidStateError: this engine holds every slot of the job itself (a handler of
                the job triggered another instance of it): it would wait for itself.
            InstanceBusyError: every slot was still held after ``timeout``.
            StorageError: the slot could not be attempted.
        """
        limit = job.concurrency
        if limit is None:
            return None
        if sum(1 for held in self._mine.values() if held == job_name) >= limit:
            raise InvalidStateError(
                f"{instance_id}: a handler of job {job_name!r} asked for a step of it while "
                f"its own step holds the job's {limit} slot(s) (concurrency={limit}); it "
                "would wait for itself (schedule the work instead, e.g. ctx.schedule())"
            )
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            token = self.slots.try_acquire(job_name, limit)
            if token is not None:
                self._mine[token] = job_name
                return token
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InstanceBusyError(
                    f"{instance_id}: all {limit} slots of job {job_name!r} (concurrency={limit}) "
                    f"were still taken after {timeout:g} s (wait_timeout)"
                )
            # A slot frees when another step ends, in any process: no signal to wait on.
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)

    def keep(self, job_name: str, token: int | None) -> None:
        """A run_due step of ``job_name`` ended: keep its slot for the job's next step."""
        if token is not None:
            self.drop_kept()
            self.kept = (job_name, token)

    def drop_kept(self, unless: str | None = None) -> None:
        """Give back the slot kept from a step (``unless`` it is that job's; never raises)."""
        kept = self.kept
        if kept is not None and kept[0] != unless:
            self.kept = None
            self.leave(kept[1])

    def leave(self, token: int | None) -> None:
        """Give the slot of an admitted step back (``None``: it had none; never raises)."""
        if token is not None and self._slots is not None:
            self._mine.pop(token, None)
            self._slots.release(token)

    def close(self) -> None:
        """Release every slot (idempotent)."""
        self.kept = None
        self._mine.clear()
        if self._slots is not None:
            self._slots.close()
            self._slots = None
