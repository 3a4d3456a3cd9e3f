"""A Hypothesis state machine over the public API, with I/O faults and power cuts.

Issue 5, part 3. ``CrashMachine`` drives the three jobs of ``crash_model`` (a few instances
each) through two ``Jobs`` objects on one file (the second one stands for another process)
and checks every step against the plain-Python model in ``crash_model``:

- the call's result or error, and the exact handler calls it made (one per step: more only
  where a fault or a crash hit that step);
- after every rule, the stored rows equal the model's world (counters, state, alarm, status,
  queued events, idempotency keys), seen through both ``Jobs`` objects, and every row obeys
  its kind's rules (a live instance with pending work has an alarm, a parked one has none);
- no acknowledged debounce event is lost or duplicated: each one is in exactly one committed
  batch, the current batch, the queue, or a cleared batch (``World.check``).

Handlers fail on demand (``fail_next_execute``, ``fail_next_event_handler``): retries, parked
instances, ``ExecutionError`` from ``send``/``add``, reducer failures on queued events.

Fault rules: ``arm_fault`` makes an I/O call of the next operation fail (it must then raise
``StorageError`` and leave the live rows as they were, or succeed); the model keeps the
operation's successor as an "unsure" state, because the failed commit's frames may still be
in the WAL file for a crash to bring back. ``run_due`` commits pass by pass, so a failure may
leave its earlier passes committed. ``retry_failed_call`` retries a keyed ``add``/``send`` that
raised: with its idempotency key it is applied exactly once, crash or not.

Power cuts: ``arm_crash`` cuts the power at the n-th I/O call of the next operation,
``crash_now`` between operations. A cut writes a disk image that keeps none, all or a random
subset of the unsynced writes (``FaultVFS.crash_image``); both ``Jobs`` are dropped and the
machine goes on from the image. With ``durability="full"`` the image must hold the last
acknowledged world, or the world one step beyond where a step was in flight (or an unsure
successor); ``PRAGMA integrity_check`` must be ok. ``reopen`` closes cleanly: then exactly the
acknowledged world is there.

``NormalDurabilityMachine`` runs the same rules with ``durability="normal"``: a power cut may
lose the latest steps, so the image may hold any world since the last clean close, but never a
torn one (a mix of two steps).

Runtime: the ``ci`` profile (derandomized) runs 300 + 75 programs of up to 50 rules in about
25 s; the ``thorough`` profile (``DURAJOBS_HYPOTHESIS_PROFILE=thorough``, random seeds) ten
times more. The library bugs the machine found are kept at the end of the file as plain tests.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import hypothesis.strategies as st
import pytest
from crash_model import (
    CONTROLS,
    IDS,
    REGISTRY,
    T0,
    Outcome,
    Runs,
    Sim,
    World,
    observe,
)
from faultvfs import FaultVFS
from hypothesis import event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from durajobs import FakeClock, Jobs, engine
from durajobs.errors import DurajobsError, StorageError


@pytest.fixture(autouse=True)
def _one_group_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_due`` also closes a group commit after 20 ms of handler time; the model commits
    each pass as one group, so keep CPU load from splitting them at random."""
    monkeypatch.setattr(engine, "GROUP_MAX_SECONDS", 3600.0)
    monkeypatch.setattr(engine, "SLOW_STEP", 3600.0)


class CrashVFS(FaultVFS):
    """A ``FaultVFS`` that can also take a power-loss image at the n-th I/O call from now.

    The image is the disk just *before* that call (which then goes ahead): a power cut in the
    middle of whatever SQLite was doing, while the live connection carries on unaware.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.crash_plan: list[Any] | None = None
        self.crash_taken: str | None = None

    def crash_at(self, n: int, kind: str, dest: str, keep: str, seed: int, db: str) -> None:
        """Cut the power just before the (n+1)-th I/O call of ``kind`` ("any", "sync", ...)."""
        self.crash_plan = [n, dest, keep, seed, db, kind]
        self.crash_taken = None

    def _io(self, kind: str, f: Any) -> None:
        plan = self.crash_plan
        if plan is not None and plan[5] in ("any", kind):
            if plan[0] == 0:
                self.crash_plan = None
                self.crash_taken = self.crash_image(plan[1], plan[2], plan[3], db=plan[4])
            else:
                plan[0] -= 1
        super()._io(kind, f)


_VFS: CrashVFS | None = None


def crash_vfs() -> CrashVFS:
    """One VFS for the whole module (registering one per example would churn apsw)."""
    global _VFS  # noqa: PLW0603 - a module-wide singleton, kept alive on purpose
    if _VFS is None:
        _VFS = CrashVFS(f"crashsm-{uuid.uuid4().hex[:8]}")
    return _VFS


def _scratch_root() -> str:
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="durajobs-crashsm-", dir=base)


ids = st.sampled_from(IDS)
via = st.sampled_from([0, 0, 1])  # which Jobs makes the call: mostly ours, sometimes the other's
keeps = st.sampled_from(["none", "all", "random"])


class CrashMachine(RuleBasedStateMachine):
    DURABILITY = "full"

    def __init__(self) -> None:
        super().__init__()
        self.vfs = crash_vfs()
        self.vfs.reset()
        self.vfs.crash_plan = None
        CONTROLS.reset()
        self.root = _scratch_root()
        self.generation = 0
        self.clock = FakeClock(T0)
        self.path = os.path.join(self._new_dir(), "jobs.db")
        self.world = World()
        self.orphans: list[World] = []  # unsure successors of calls that raised StorageError
        self.history: list[World] = [self.world]  # worlds since the last durable point
        self.pending: tuple[Any, ...] | None = None
        self.event_no = 0
        self.jobs: Jobs | None = None
        self.jobs2: Jobs | None = None
        self.last_raised: DurajobsError | None = None
        self.last_error: DurajobsError | None = None
        self.failed_call: tuple[Any, ...] | None = None  # a keyed add/send that raised

    @initialize()
    def open_database(self) -> None:
        self._open()

    def teardown(self) -> None:
        try:
            if self.jobs is not None:
                assert self.jobs.engine.store.integrity_check() == ["ok"]
        finally:
            self.vfs.clear_faults()
            self.vfs.crash_plan = None
            self._close()
            self.vfs.reset()
            shutil.rmtree(self.root, ignore_errors=True)

    # -- plumbing ---------------------------------------------------------------------------

    def _new_dir(self) -> str:
        self.generation += 1
        folder = os.path.join(self.root, f"gen{self.generation}")
        os.mkdir(folder)
        return folder

    def _open(self) -> None:
        def one() -> Jobs:
            return Jobs(
                self.path, REGISTRY, clock=self.clock, durability=self.DURABILITY,
                vfs=self.vfs.vfs_name, wake=False, wait_timeout=2.0,
            )  # fmt: skip

        self.jobs = one()
        self.jobs2 = one()

    def _close(self) -> None:
        for jobs in (self.jobs, self.jobs2):
            if jobs is not None:
                jobs.close()
        self.jobs = self.jobs2 = None

    def _via(self, which: int) -> Jobs:
        jobs = self.jobs if which == 0 else self.jobs2
        assert jobs is not None
        return jobs

    def _event(self) -> int:
        self.event_no += 1
        return self.event_no

    def _commit(self, world: World) -> None:
        """The acknowledged world moved on: earlier unsure successors are dead now."""
        if world != self.world:
            self.world = world
            self.orphans = []
            self.history.append(world)

    def _op(
        self,
        which: int,
        real: Callable[[Jobs], Any],
        simulate: Callable[[Sim], Outcome],
        *,
        ordered: bool = True,
    ) -> None:
        """Run one public call and check it against the model (see the module doc)."""
        jobs = self._via(which)
        pre = self.world
        orphans_before = list(self.orphans)
        out = simulate(Sim(pre, self.clock.time(), CONTROLS.fail, CONTROLS.fail_event))
        pending, self.pending = self.pending, None
        fault = None
        crash_dir = None
        if pending is not None and pending[0] == "fault":
            _, kind, error, n, persistent = pending
            fault = self.vfs.fail_after(n, kind=kind, error=error, persistent=persistent)
        elif pending is not None and pending[0] == "crash":
            _, n, io_kind, keep, seed = pending
            crash_dir = self._new_dir()
            self.vfs.crash_at(n, io_kind, crash_dir, keep, seed, self.path)
        CONTROLS.calls.clear()
        result: Any = None
        raised: DurajobsError | None = None
        try:
            result = real(jobs)
        except DurajobsError as exc:
            raised = exc
        finally:
            self.vfs.clear_faults()
            self.vfs.crash_plan = None
        image, self.vfs.crash_taken = self.vfs.crash_taken, None
        self.last_raised = raised if isinstance(raised, StorageError) else None
        self.last_error = raised

        committed, unsure = (pre, out) if isinstance(raised, StorageError) else (out.world, out)
        if isinstance(raised, StorageError) and len(out.stages) > 1:
            # run_due commits pass by pass: find how many passes made it.
            stored = observe(jobs)
            done = [pre] + [stage.world for stage in out.stages]
            passes = next((i for i, w in enumerate(done) if w.stored() == stored), None)
            assert passes is not None, f"after a failed run_due: {stored}, passes {done}"
            assert passes < len(out.stages), "run_due raised, but every pass committed"
            committed, unsure = done[passes], out.stages[passes]
            event(f"run_due failed in pass {passes + 1} of {len(out.stages)}")

        calls = CONTROLS.calls if ordered else sorted(CONTROLS.calls, key=repr)
        expected_calls = list(unsure.calls) if ordered else sorted(unsure.calls, key=repr)
        assert calls == expected_calls, f"handler calls: {calls}, expected {expected_calls}"
        assert (CONTROLS.fail, CONTROLS.fail_event) == (set(unsure.fail), set(unsure.fail_event))

        if fault is not None:
            event(f"fault {'fired: ' + type(raised).__name__ if fault.fired else 'not reached'}")
        if isinstance(raised, StorageError):
            assert fault is not None, f"StorageError without a fault: {raised}"
            assert fault.fired, f"StorageError, but the fault did not fire: {raised}"
            # Nothing changed on the live connection (the invariant checks it), but the
            # commit's frames may be in the WAL: a crash may still bring the successor back.
            self._commit(committed)
            if unsure.world != committed:
                self.orphans.append(unsure.world)
                self.history.append(unsure.world)
        else:
            if out.error is not None:
                assert isinstance(raised, out.error), f"expected {out.error.__name__}: {raised!r}"
            else:
                assert raised is None, f"unexpected {raised!r}"
                self._check_result(result, out.result)
            self._commit(out.world)

        if crash_dir is not None:
            if image is not None:  # the power went out during the call
                candidates = [("before", pre), ("in flight", out.world)]
                candidates += [("partly done", stage.world) for stage in out.stages[:-1]]
                candidates += [("unsure", w) for w in orphans_before]
            else:  # the call did fewer I/O calls than planned: the cut comes right after it
                image = self.vfs.crash_image(crash_dir, keep, seed, db=self.path)
                candidates = [("acknowledged", self.world)]
                candidates += [("unsure", w) for w in self.orphans]
            self._recover(image, candidates)

    @staticmethod
    def _check_result(result: Any, expected: dict[str, Any]) -> None:
        for field, want in expected.items():
            if field == "value":
                got = result
            else:
                got = getattr(result, field)
                if hasattr(got, "timestamp"):
                    got = got.timestamp()
            assert got == want, f"{field}: got {got!r}, expected {want!r} in {result!r}"

    def _recover(self, image: str, candidates: list[tuple[str, World]]) -> None:
        """Drop both Jobs (the process died), go on from the power-loss image."""
        self._close()
        self.vfs.reset()
        self.path = image
        self._open()
        assert self.jobs is not None
        assert self.jobs.engine.store.integrity_check() == ["ok"]
        stored = observe(self.jobs)
        if self.DURABILITY == "normal":
            # Any world since the last durable point (a prefix of the acknowledged steps).
            candidates = [*(("earlier", w) for w in self.history[:-1]), *candidates]
        found = next((c for c in reversed(candidates) if c[1].stored() == stored), None)
        if found is None:
            raise AssertionError(
                "after a power cut the database holds none of the allowed worlds:\n"
                f"  stored: {stored}\n"
                + "\n".join(f"  allowed ({label}): {w.stored()}" for label, w in candidates)
            )
        label, world = found
        event(f"power cut: the {label} world survived")
        self.world = world
        self.orphans = []
        self.history = [world]

    # -- Continuous -------------------------------------------------------------------------

    @rule(user=ids, which=via)
    def continuous_start(self, user: str, which: int) -> None:
        iid = f"continuous:c:{user}"
        self._op(
            which,
            lambda jobs: jobs.continuous("c").start(user, Runs()),
            lambda sim: sim.outcome(sim.c_start(iid)),
        )

    @rule(user=ids, which=via)
    def continuous_trigger(self, user: str, which: int) -> None:
        iid = f"continuous:c:{user}"
        self._op(
            which,
            lambda jobs: jobs.continuous("c").trigger(user),
            lambda sim: sim.outcome(sim.c_trigger(iid)),
        )

    @rule(user=ids, which=via)
    def continuous_terminate(self, user: str, which: int) -> None:
        iid = f"continuous:c:{user}"
        self._op(
            which,
            lambda jobs: jobs.continuous("c").terminate(user),
            lambda sim: sim.outcome(sim.terminate(iid)),
        )

    # -- Debounce ---------------------------------------------------------------------------

    @rule(user=ids, which=via, keyed=st.booleans())
    def debounce_add(self, user: str, which: int, keyed: bool) -> None:
        event = self._event()
        self._accept(("add", which, user, event, f"k{event}" if keyed else None, False))

    @rule(user=ids, which=via, keyed=st.booleans())
    def debounce_add_while_busy(self, user: str, which: int, keyed: bool) -> None:
        """``add`` while the other Jobs holds the instance's claim (a flush running there)."""
        event = self._event()
        self._accept(("add", which, user, event, f"k{event}" if keyed else None, True))

    def _accept(self, call: tuple[Any, ...]) -> None:
        """An ``add`` or ``send``: remembered when it raises StorageError, to be retried."""
        what, which, user, event, key, busy = call
        if what == "add":
            iid = f"debounce:d:{user}"
            other = self._via(1 - which)

            def real(jobs: Jobs) -> Any:
                token = other.engine.locks.try_acquire(iid) if busy else None
                assert token is not None or not busy
                try:
                    return jobs.debounce("d").add(user, event, key=key)
                finally:
                    if token is not None:
                        other.engine.locks.release(token)

            def simulate(sim: Sim) -> Outcome:
                accept = sim.d_enqueue if busy else sim.d_add
                return sim.outcome(*accept(iid, event, key))
        else:
            iid = f"task:t:{user}"

            def real(jobs: Jobs) -> Any:
                return jobs.task("t").send(user, event, key=key)

            def simulate(sim: Sim) -> Outcome:
                return sim.outcome(*sim.t_send(iid, event, key))

        self.failed_call = None
        self._op(which, real, simulate)
        if self.last_raised is not None and key is not None:
            self.failed_call = call

    @precondition(lambda self: self.failed_call is not None)
    @rule()
    def retry_failed_call(self) -> None:
        """Retry an ``add``/``send`` that raised StorageError, with its idempotency key: it is
        applied exactly once whether or not the failed attempt's commit survived."""
        assert self.failed_call is not None
        self._accept(self.failed_call)
        event(f"retried a failed call: {type(self.last_error).__name__}")

    @rule(user=ids, which=via)
    def debounce_flush(self, user: str, which: int) -> None:
        iid = f"debounce:d:{user}"
        self._op(
            which,
            lambda jobs: jobs.debounce("d").flush(user),
            lambda sim: sim.outcome(sim.d_flush(iid)),
        )

    @rule(user=ids, which=via)
    def debounce_clear(self, user: str, which: int) -> None:
        iid = f"debounce:d:{user}"
        self._op(
            which,
            lambda jobs: jobs.debounce("d").clear(user),
            lambda sim: sim.outcome(sim.d_clear(iid)),
        )

    @rule(user=ids, which=via)
    def debounce_retry(self, user: str, which: int) -> None:
        iid = f"debounce:d:{user}"

        def simulate(sim: Sim) -> Outcome:
            result, error = sim.resume(iid)
            return sim.outcome(result, error)

        self._op(which, lambda jobs: jobs.debounce("d").retry(user), simulate)

    # -- Task -------------------------------------------------------------------------------

    @rule(user=ids, which=via, keyed=st.booleans())
    def task_send(self, user: str, which: int, keyed: bool) -> None:
        event = self._event()
        self._accept(("send", which, user, event, f"k{event}" if keyed else None, False))

    @precondition(lambda self: bool(self.world.keys))
    @rule(which=via, data=st.data())
    def send_duplicate(self, which: int, data: st.DataObject) -> None:
        """An add/send with an accepted key: ``DuplicateEventError``, nothing changes."""
        iid, key = data.draw(st.sampled_from(sorted(self.world.keys)))
        what = "add" if iid.startswith("debounce:") else "send"
        self._accept((what, which, iid.split(":")[2], self._event(), key, False))

    @rule(user=ids, which=via)
    def task_trigger(self, user: str, which: int) -> None:
        iid = f"task:t:{user}"
        self._op(
            which,
            lambda jobs: jobs.task("t").trigger(user),
            lambda sim: sim.outcome(sim.t_trigger(iid)),
        )

    @rule(user=ids, which=via)
    def task_terminate(self, user: str, which: int) -> None:
        iid = f"task:t:{user}"
        self._op(
            which,
            lambda jobs: jobs.task("t").terminate(user),
            lambda sim: sim.outcome(sim.terminate(iid)),
        )

    @rule(user=ids, which=via)
    def task_retry(self, user: str, which: int) -> None:
        iid = f"task:t:{user}"

        def simulate(sim: Sim) -> Outcome:
            result, error = sim.resume(iid)
            return sim.outcome(result, error)

        self._op(which, lambda jobs: jobs.task("t").retry(user), simulate)

    # -- flow control (issue 21) ------------------------------------------------------------

    @rule(
        what=st.sampled_from(["c", "d", "t", "continuous:c:a", "debounce:d:b", "task:t:a"]),
        paused=st.booleans(),
        which=via,
    )
    def pause_or_resume(self, what: str, paused: bool, which: int) -> None:
        """``jobs.pause/resume(job)`` or ``client.pause/resume(id)``: stored with the world; a
        paused job or instance runs no alarm step until resumed, and keeps its alarm."""

        def real(jobs: Jobs) -> Any:
            if ":" not in what:
                return jobs.pause(what) if paused else jobs.resume(what)
            kind, job, user = what.split(":")
            client = getattr(jobs, kind)(job)
            return client.pause(user) if paused else client.resume(user)

        self._op(which, real, lambda sim: sim.outcome(sim.set_paused(what, paused)))

    @rule(job=st.sampled_from(["c", "d", "t"]), which=via)
    def run_due_while_a_slot_is_held(self, job: str, which: int) -> None:
        """The other process holds the job's one slot (``concurrency=1``) while ``run_due``
        runs: none of that job's due steps may run (the call log says which ran), the others
        do, and the held ones stay due with their alarms."""
        other = self._via(1 - which)

        def real(jobs: Jobs) -> Any:
            token = other.engine.gate.slots.try_acquire(job, 1)
            assert token is not None, f"the slot of {job} is free between operations"
            try:
                return jobs.run_due()
            finally:
                other.engine.gate.leave(token)

        self._op(
            which,
            real,
            lambda sim: sim.outcome({"value": sim.run_due(held=frozenset({job}))}),
            ordered=False,
        )

    # -- time, alarms, failing handlers -------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 3, 5, 10, 20]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(which=via)
    def run_due(self, which: int) -> None:
        self._op(
            which,
            lambda jobs: jobs.run_due(),
            lambda sim: sim.outcome({"value": sim.run_due()}),
            ordered=False,
        )

    @rule(job=st.sampled_from(["continuous:c", "debounce:d", "task:t"]), user=ids)
    def fail_next_execute(self, job: str, user: str) -> None:
        CONTROLS.fail.add(f"{job}:{user}")

    @rule(job=st.sampled_from(["debounce:d", "task:t"]), user=ids)
    def fail_next_event_handler(self, job: str, user: str) -> None:
        """The instance's next reducer / ``on_event`` call raises."""
        CONTROLS.fail_event.add(f"{job}:{user}")

    # -- faults, power cuts, restarts ---------------------------------------------------------

    @precondition(lambda self: self.pending is None)
    @rule(
        kind=st.sampled_from(["write", "sync", "any"]),
        error=st.sampled_from(["ioerr", "full"]),
        n=st.integers(0, 12),
        persistent=st.booleans(),
    )
    def arm_fault(self, kind: str, error: str, n: int, persistent: bool) -> None:
        """The next call's (n+1)-th matching I/O call fails (and later ones if persistent)."""
        self.pending = ("fault", kind, error, n, persistent)

    @precondition(lambda self: self.pending is None)
    @rule(
        n=st.integers(0, 16),
        kind=st.sampled_from(["any", "sync"]),
        keep=keeps,
        seed=st.integers(0, 2**16),
    )
    def arm_crash(self, n: int, kind: str, keep: str, seed: int) -> None:
        """The power goes out at the next call's (n+1)-th I/O call (of ``kind``).

        Cutting it just before a commit's WAL sync, with the unsynced writes kept, is the cut
        after which the in-flight step may survive.
        """
        self.pending = ("crash", n % 2 if kind == "sync" else n, kind, keep, seed)

    @rule(keep=keeps, seed=st.integers(0, 2**16))
    def crash_now(self, keep: str, seed: int) -> None:
        self.pending = None
        image = self.vfs.crash_image(self._new_dir(), keep, seed, db=self.path)
        candidates = [("acknowledged", self.world), *(("unsure", w) for w in self.orphans)]
        self._recover(image, candidates)

    @rule()
    def checkpoint_after_every_commit(self) -> None:
        """Until the next reopen: checkpoint after each commit and truncate the WAL when it
        restarts, so faults and cuts also land in the checkpoint after a commit point."""
        for jobs in (self.jobs, self.jobs2):
            assert jobs is not None
            jobs.engine.store.query("PRAGMA wal_autocheckpoint=1")
            jobs.engine.store.query("PRAGMA journal_size_limit=0")

    @rule()
    def reopen(self) -> None:
        """A clean close and reopen: exactly the acknowledged world is there."""
        self.pending = None
        self._close()
        self.vfs.reset()
        self._open()
        assert self.jobs is not None
        assert self.jobs.engine.store.integrity_check() == ["ok"]
        self.orphans = []
        self.history = [self.world]

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def stored_rows_match_the_model(self) -> None:
        if self.jobs is None:
            return
        want = self.world.stored()
        for jobs in (self.jobs, self.jobs2):
            assert jobs is not None
            got = observe(jobs)
            assert got == want, f"stored {got}\n model {want}"
        self.world.check()


class NormalDurabilityMachine(CrashMachine):
    DURABILITY = "normal"


def _scaled(fraction: float, minimum: int) -> int:
    return max(minimum, int(settings.default.max_examples * fraction))


CrashMachine.TestCase.settings = settings(
    max_examples=_scaled(10, 10), stateful_step_count=50, deadline=None
)
NormalDurabilityMachine.TestCase.settings = settings(
    max_examples=_scaled(1.5, 5), stateful_step_count=50, deadline=None
)

TestCrashStateMachine = CrashMachine.TestCase
TestNormalDurabilityStateMachine = NormalDurabilityMachine.TestCase


# -- shrunk examples found by the machine, kept as plain tests ----------------------------------


def _plain_jobs(tmp_path: Any) -> Jobs:
    CONTROLS.reset()
    return Jobs(tmp_path / "jobs.db", REGISTRY, clock=FakeClock(T0), wake=False)


def test_send_to_a_parked_task_resumes_it(tmp_path: Any) -> None:
    """A send to a parked task raised TypeError (steps._task_send passed ``attempt`` twice)."""
    with _plain_jobs(tmp_path) as jobs:
        jobs.task("t").send("a", 1)
        jobs.clock.advance(10)  # type: ignore[attr-defined]
        CONTROLS.fail.add("task:t:a")
        assert jobs.run_due() == 1
        assert jobs.task("t").status("a").status == "failed"  # parked: no retry policy
        result = jobs.task("t").send("a", 2)
        assert result.scheduled_at == jobs.clock.now() + timedelta(seconds=10)
        status = jobs.task("t").status("a")
        assert (status.status, status.attempt, status.event_count) == ("active", 1, 2)


def test_add_is_kept_when_folding_a_queued_event_fails(tmp_path: Any) -> None:
    """Shrunk by the machine: an ``add`` whose step first folds an event queued behind a
    running step, where the reducer fails on that queued event, returned normally but stored
    nothing of its own event: an acknowledged event was lost (behaviour 5)."""
    with _plain_jobs(tmp_path) as jobs:
        CONTROLS.fail_event.add("debounce:d:a")  # the next reducer call raises
        with Jobs(tmp_path / "jobs.db", REGISTRY, clock=jobs.clock, wake=False) as other:
            token = other.engine.locks.try_acquire("debounce:d:a")
            assert token is not None
            jobs.debounce("d").add("a", 1)  # queued: a step "runs" in the other process
            other.engine.locks.release(token)
        jobs.debounce("d").add("a", 2)  # folds 1 first: the reducer fails; 2 is acknowledged
        assert jobs.debounce("d").status("a").status == "failed"  # parked: no retry policy
        queued = [q.event for q in jobs.engine.store.queued("debounce:d:a")]
        assert queued == ["1", "2"]


def test_a_resumed_batch_stays_due_now_after_an_add(tmp_path: Any) -> None:
    """Found by the thorough profile: add -> the next execute fails -> a manual flush (parked)
    -> retry -> add. The resumed batch is due at once, like the manual flush it resumes, and a
    later add does not postpone it to the window's end (the model expected the window)."""
    with _plain_jobs(tmp_path) as jobs:
        jobs.debounce("d").add("a", 1)
        CONTROLS.fail.add("debounce:d:a")
        flushed = jobs.debounce("d").flush("a")
        assert not flushed.flushed
        assert jobs.debounce("d").status("a").status == "failed"
        jobs.debounce("d").retry("a")
        jobs.clock.advance(1)  # type: ignore[attr-defined]
        jobs.debounce("d").add("a", 2)
        status = jobs.debounce("d").status("a")
        assert status.will_flush_at is not None
        assert status.will_flush_at <= jobs.clock.now()
        assert jobs.run_due() == 1
        assert jobs.debounce("d").status("a").status == "not_found"  # flushed: 1 and 2
