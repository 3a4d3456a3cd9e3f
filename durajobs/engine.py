"""The step engine: claim an instance, run the pure step (and its handlers), commit.

The one path every step takes, whether a client call or a due alarm, in this process or in a
daemon worker::

    claim (the store's Claims: writes nothing)  ->  read the committed row (no transaction)
    ->  steps.step(...) runs the user's handlers, returns a Decision
    ->  store.commit([...]) in one write transaction, fenced on the row's step
    ->  release the claim  ->  hooks / tracker / wake the daemon

User code never runs inside a write transaction: the claim, not the database, keeps other
steps of the instance out while a handler runs, so a 10 s handler blocks nobody else.
``run_due`` commits many finished steps in one transaction (group commit), holding their claims
until it has; a crash before that commit loses only handler runs, which run again.

Single calls (``run``), operators' actions (``apply``), bulk calls (``run_many``) and due alarms
(``run_due``) share the pipeline's parts: ``_claim``, ``_load``, ``_stepped`` (the pure step,
its refusal, and the write it describes), ``_commit`` (one transaction, with the fallback when
the store rejects a write) and ``_after`` (wake-up, hooks). What the engine calls around its
steps (``Hooks``) is passed in at construction, or per call.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from .core import steps
from .core.codec import Codec, TypeCodec, upgrade
from .core.definitions import Debounce, Definition
from .core.rows import FencedOut, Queued, RejectedWrite
from .core.steps import Decision, Env, Instance, Message
from .errors import (
    DuplicateEventError,
    ExecutionError,
    InvalidStateError,
    JobNotFoundError,
    ValidationError,
)
from .flow import Gate
from .stores.base import Claims, Slots, Store, Waker, Write

__all__ = ["BULK_MAX_INSTANCES", "Engine", "Hooks", "RecordHook", "StepOutcome"]

log = logging.getLogger("durajobs")

RecordHook = Callable[[list[dict[str, Any]]], None]
# After each commit: every committed step's write and decision (its typed ``outcome``)
DoneHook = Callable[[list[tuple[Write, Decision]]], None]
# (instance id, timeout, step, due_at): before a due step's handlers
StepHook = Callable[[str, float | None, int, float | None], None]
# Around every step (its read, its handlers): ``watch(env, row)`` is entered before and left
# after; what it enters returns ``seen(decision) -> decision`` (``durajobs.tracing``). ``None``
# from ``watch``: nothing to watch for this step (no span).
StepWatch = Callable[
    [Env, Instance | None],
    contextlib.AbstractContextManager[Callable[[Decision], Decision]] | None,
]


class Hooks(NamedTuple):
    """What the engine calls around its steps: given at construction (``Jobs``), or for one
    call (``run_due``, ``time_out``: the daemon's workers), never patched on."""

    on_records: RecordHook | None = None  # after each commit: its history records
    before_step: StepHook | None = None  # before a due step's handlers (the daemon's watch)
    waker: Waker | None = None  # poked after commits that may set an alarm
    watch: StepWatch | None = None  # around every step's handlers (tracing spans)
    on_done: DoneHook | None = None  # after each commit, before on_records: what each step did


NO_HOOKS = Hooks()


GROUP_MAX_STEPS = 256
GROUP_MAX_SECONDS = 0.02
SLOW_STEP = 0.005  # a job whose steps take longer commits what is pending before its handlers
# Claims with ``batch_claims`` (PostgreSQL's advisory claims, where each claim and each read is
# a round trip): run_due claims up to this many due instances in one ``try_acquire_many`` and
# reads their rows in one ``load_many``, after the claims are granted.
CLAIM_AHEAD = 64
# A bulk call holds the claim of every distinct instance it names until its one commit: all or
# nothing (a claim let go before the commit would let another step of that instance commit in
# between, and the fence would then refuse the whole batch). Each claim costs more the more
# are held, so many claims cost quadratic time: the kernel walks a file's list of OFD locks at
# every lock call, and PostgreSQL walks a session's local lock table at every transaction end
# (LockReleaseAll; each claim is a statement). Profiled: 20,000 new instances in one send_many
# took 7 s on SQLite (75 % of it in fcntl) and 25 s on PostgreSQL (in the claims' round trips);
# in ten calls of 2,000, 0.85 s and 3.5 s. Each advisory lock also takes a slot of the server's
# shared lock table (max_locks_per_transaction x max_connections: 6,400 with the defaults, for
# every session together). So one bulk call names at most this many distinct instances (items
# for one instance count once), and a larger call is refused before anything runs: time stays
# linear in the items and the claims held at once bounded. Chunking inside the call would
# have to give up all or nothing (or hold a write transaction while handlers run): the caller
# splits, into calls of its own choosing.
BULK_MAX_INSTANCES = 2_000
_BULK_ATTEMPTS = 5  # a skipping bulk call steps its batch again when a key is taken meanwhile


def check_types(
    registry: Mapping[str, Definition],
) -> dict[str, tuple[TypeCodec, TypeCodec | None]]:
    """(state codec, event codec) of every job: an unstorable type fails here, not mid-step.

    Raises:
        TypeError: a state or event type cannot be stored (the message names the job).
    """
    codec = Codec()
    codecs: dict[str, tuple[TypeCodec, TypeCodec | None]] = {}
    for name, job in registry.items():
        try:
            if isinstance(job, Debounce):
                codecs[name] = (codec.for_type(job.state_type), codec.for_type(job.event))
            elif job.kind == "task":
                codecs[name] = (codec.for_type(job.state), codec.for_type(job.event))
            else:
                codecs[name] = (codec.for_type(job.state), None)
        except TypeError as exc:
            raise TypeError(f"job {name!r}: {exc}") from None
    return codecs


def instance_id_of(kind: str, job: str, user_id: str) -> str:
    """``"{kind}:{job_name}:{id}"``."""
    return f"{kind}:{job}:{user_id}"


class Engine:
    """Runs steps against one store. Internal: users go through ``Jobs`` and its clients."""

    def __init__(
        self,
        store: Store,
        locks: Claims,
        registry: Mapping[str, Definition],
        *,
        clock: Any,
        wait_timeout: float,
        history_limit: int,
        hooks: Hooks = NO_HOOKS,
        rng: random.Random | None = None,
        codecs: dict[str, tuple[TypeCodec, TypeCodec | None]] | None = None,
        slots: Callable[[], Slots] | None = None,
    ) -> None:
        self.store = store
        # Flow control (``durajobs.flow``): concurrency slots (opened by ``slots`` on first
        # need) and rate budgets; the jobs held in the current run_due call (job -> when its
        # budget refills, None: a slot must free), and the instances it left due for them.
        self.gate = Gate(registry, slots)
        self._held_jobs: dict[str, float | None] = {}
        self._held: dict[str, float | None] = {}
        self.locks = locks
        self.registry = registry
        self.clock = clock
        self.wait_timeout = wait_timeout
        self.history_limit = history_limit
        self.hooks = hooks  # a call's own hooks replace them while it runs (``_hooks_for``)
        self._committed = 0  # steps run_due committed in this call
        self._group_started = 0.0
        self._rng = rng or random.Random()
        # job -> moving average of its step time: a job above SLOW_STEP is not grouped with
        # others (one blip, a GC pause, fades after a few fast steps)
        self._step_seconds: dict[str, float] = {}
        self._codecs = check_types(registry) if codecs is None else codecs
        # What a step's contexts decode with: each job's codecs, whose decode failures this
        # engine notes (``_unreadable``: the texts of the step running now that could not be
        # read). Stored state is decoded only when a handler reads it (most steps of a job
        # whose handler ignores its state decode nothing); a failure is that instance's.
        self._unreadable: list[str] = []
        self._watched = {
            name: (self._watch(state), None if event is None else self._watch(event))
            for name, (state, event) in self._codecs.items()
        }
        # "kind:job:" of every registered job: due reads skip instances of jobs this registry
        # cannot run, so they never crowd out the ones it can.
        self.prefixes = tuple(f"{job.kind}:{name}:" for name, job in registry.items())
        # Steps ``run_due`` finished whose commit is pending (their claims are held), and the
        # instances whose handlers run right now: a handler's own client calls must neither
        # wait for those claims (held by this very engine) nor step its own instance.
        self._pending: list[_Pending] = []
        self._running: list[str] = []
        self._bulk_held: dict[str, int] = {}  # claims a bulk call (run_many) holds: id -> token
        # Claims run_due took ahead (CLAIM_AHEAD) for instances whose steps have not run yet:
        # id -> (token, row, queued events), or None where the claim was refused.
        self._ahead: dict[str, tuple[int, Instance | None, list[Any]] | None] = {}
        # Instances whose step could not even be recorded as a failure: skipped by run_due in
        # this engine (logged once); a restart tries them again.
        self._poisoned: set[str] = set()

    # -- codecs ---------------------------------------------------------------------------

    def codecs(self, job_name: str) -> tuple[TypeCodec, TypeCodec | None]:
        """(state codec, event codec) of a registered job."""
        return self._codecs[job_name]

    def state_of(self, job_name: str, inst: Instance) -> Any:
        """The state of a row as this code reads it (``get_state``): the job's ``migrate``
        chain run from its stored version, then decoded; ``None`` if it has none.

        Raises:
            ValidationError: the state cannot be read (see ``_read``); nothing is written.
        """
        if inst.state is None:
            return None
        job = self.registry[job_name]
        what = f"state of {inst.instance_id} (job {job_name!r}, stored version {inst.version})"
        text = upgrade(inst.state, inst.version, job.version, job.migrate, what)
        return self._codecs[job_name][0].decode(text, what)

    def _watch(self, codec: TypeCodec) -> TypeCodec:
        """``codec``, whose decode failures are noted in ``_unreadable`` before they raise."""
        plain = codec.decode

        def decode(text: str, what: str) -> Any:
            try:
                return plain(text, what)
            except ValidationError:
                self._unreadable.append(text)
                raise

        return TypeCodec(codec.tp, codec.encode, decode)

    def _env(self, inst_id: str, job_name: str, user_id: str, queued: Sequence[Any]) -> Env:
        # A job this registry does not have: only handler-free steps (``apply``) run there.
        state_codec, event_codec = self._watched.get(job_name, (_NO_CODEC, None))
        return Env(
            inst_id, job_name, user_id, self.clock.time(), self._rng.random(),
            time.perf_counter, state_codec, event_codec, queued,
        )  # fmt: skip

    # -- the pipeline's parts -------------------------------------------------------------

    def _claim(self, instance_id: str, wait: bool) -> int | None:
        """The instance's claim (``wait``: up to ``wait_timeout``), or ``None`` if busy."""
        if self._running or self._pending or self._bulk_held:
            self._reentered(instance_id)
        if wait:
            return self.locks.acquire(instance_id, self.wait_timeout)
        return self.locks.try_acquire(instance_id)

    def _load(self, instance_id: str, kind: str) -> tuple[Instance | None, list[Any]]:
        """The row read after the claim, with its queued events (Debounce)."""
        if kind == "debounce":
            return self.store.load_with_queue(instance_id)
        return self.store.load(instance_id), []

    def _stepped(
        self,
        job: Any,
        inst: Instance | None,
        msg: Message,
        env: Env,
        *,
        key: str | None = None,
        label: str = "",
        contain: bool = False,
    ) -> tuple[Decision, Write | None]:
        """The pure step (and the user's handlers) and the write it describes (``None``:
        nothing to commit), the instance marked as running here meanwhile (a handler's own
        client call on it fails at once instead of waiting for itself). ``contain`` (due
        alarms): the step's exception is the instance's failure. ``label`` names it in errors.

        Raises:
            ExecutionError: a handler raised in a client's call (the decision is ``REFUSED``).
            ValidationError: a client's call on an instance this code cannot read (``_read``);
                an alarm's step (``contain``) parks such an instance instead.
        """
        watch = self.hooks.watch
        watching = None if watch is None else watch(env, inst)
        if watching is None:
            return self._decided(job, inst, msg, env, key, label, contain, None)
        with watching as seen:  # the span covers the read, the handlers, a park
            return self._decided(job, inst, msg, env, key, label, contain, seen)

    def _decided(
        self, job: Any, inst: Instance | None, msg: Message, env: Env, key: str | None,
        label: str, contain: bool, seen: Callable[[Decision], Decision] | None,
    ) -> tuple[Decision, Write | None]:  # fmt: skip
        """``_stepped`` inside its watch (``seen``: what the watch is told of the decision)."""
        stored = inst  # as stored: what a park keeps
        if (
            inst is not None
            and (inst.version != job.version or env.queued)  # else there is nothing to upgrade
            and not isinstance(msg, _READS_NOTHING)
        ):
            try:
                inst, env = self._read(job, inst, env)
            except ValidationError as refused:
                assert stored is not None
                return self._unreadable_step(job, stored, env, refused, label, contain, seen)
        outer, self._unreadable = self._unreadable, []  # a handler's own calls step too
        self._running.append(env.instance_id)
        stepped: Decision | None = None
        try:
            stepped = steps.step(job, inst, msg, env)
        except Exception as exc:  # contained: never let one instance stop the others
            if self._unreadable and stored is not None:
                pass  # this instance's stored values: below
            elif not contain or inst is None:
                raise
            else:
                stepped = self._rejected(job, inst, exc, env)
        finally:
            self._running.pop()
            unreadable, self._unreadable = self._unreadable, outer
        if unreadable and stored is not None:  # its state or an event could not be read
            error = self._why_unreadable(job, stored, env, unreadable[0])
            return self._unreadable_step(job, stored, env, error, label, contain, seen)
        assert stepped is not None
        decision = stepped
        if seen is not None:
            decision = seen(decision)
        if decision.raise_error is not None:
            cause = decision.raise_error
            raise ExecutionError(
                f"{label or env.instance_id}: handler raised "
                f"{steps.safe_text(_describe(cause))}{_batch(label)}",
                cause,
            ) from cause
        if not decision.changed:
            return decision, None
        return decision, _write(env, inst, decision, key, job.version)

    def _unreadable_step(
        self, job: Any, stored: Instance, env: Env, error: ValidationError, label: str,
        contain: bool, seen: Callable[[Decision], Decision] | None,
    ) -> tuple[Decision, Write | None]:  # fmt: skip
        """A step of an instance this code cannot read: a client's call is refused (the row
        left as it was); an alarm's step parks it, its state, version and queue as stored.

        Raises:
            ValidationError: a client's call (a bulk call's item: its label named).
        """
        if label:  # a bulk call's item: the message names its index
            raise ValidationError(f"{label}: {error}{_batch(label)}") from None
        if not contain:
            raise error
        decision = _park_unreadable(stored, env, error)
        if seen is not None:
            decision = seen(decision)
        return decision, _write(env, stored, decision, None, job.version)

    def _why_unreadable(self, job: Any, stored: Instance, env: Env, text: str) -> ValidationError:
        """The error of a stored text a step's decode refused, naming the object, its instance,
        job and stored version (decoded again: the failing step's message named less)."""
        if text == stored.state or stored.state is None:
            codec, version = self._codecs[env.job_name][0], stored.version
            what = f"state of {stored.instance_id}"
        else:
            codec = self._codecs[env.job_name][1] or self._codecs[env.job_name][0]
            item = next((q for q in env.queued if q.event == text), None)
            version = stored.version if item is None else item.version
            what = f"queued event {'?' if item is None else item.seq} of {stored.instance_id}"
        try:
            codec.decode(text, f"{what} (job {env.job_name!r}, stored version {version})")
        except ValidationError as exc:
            return exc
        return ValidationError(f"{what} (job {env.job_name!r}) cannot be read by this code")

    def _read(self, job: Any, inst: Instance, env: Env) -> tuple[Instance, Env]:
        """The row and its queued events as this code reads them: the job's ``migrate`` chain
        run from each stored version up to the definition's (nothing when they agree). Nothing
        is written: the step's commit stores the result, with the definition's version. The
        values are decoded when the step reads them (a failure there is noted by the step's
        codecs: see ``_watch``): a stored key the class does not have, a missing field, a
        wrong type.

        Raises:
            ValidationError: the state or a queued event was stored by a newer version of
                the definition, or a migration failed; names the instance, the job, the
                stored version.
        """
        if isinstance(job, _HandlerFree):
            return inst, env
        version = job.version
        if inst.version != version:
            state = inst.state
            if state is not None:
                what = (
                    f"state of {inst.instance_id} (job {env.job_name!r}, "
                    f"stored version {inst.version})"
                )
                state = upgrade(state, inst.version, version, job.migrate, what)
            inst = inst._replace(state=state, version=version)
        if any(item.version != version for item in env.queued):
            queued = []
            for item in env.queued:
                if item.version == version:
                    queued.append(item)
                    continue
                what = (
                    f"queued event {item.seq} of {inst.instance_id} (job "
                    f"{env.job_name!r}, stored version {item.version})"
                )
                text = upgrade(item.event, item.version, version, job.migrate, what)
                queued.append(Queued(item.seq, text, item.added_at, version))
            env = env._replace(queued=queued)
        return inst, env

    def _commit(
        self,
        todo: list[_Pending],
        *,
        atomic: bool = False,
        group: bool = False,
        rejected: RejectedWrite | None = None,
    ) -> list[_Pending]:
        """Commit the steps' writes in ONE transaction; returns the steps whose fence held.

        A write the store rejects (``RejectedWrite``; ``rejected``: the caller's first try
        was) with the caller's own values (a new instance, a creating message, a bulk call)
        refuses the call (``ValidationError``); otherwise the step's next fallback
        (``Decision.fallback``) replaces it and the commit is tried again. A rejected last
        resort: a group (``run_due``) skips that instance in this engine, a single step raises.
        """
        while True:
            if rejected is None:
                try:
                    applied = self.store.commit(
                        [p.write for p in todo], self.clock.time(), self.history_limit,
                        atomic=atomic,
                    )  # fmt: skip
                    return [p for p, ok in zip(todo, applied, strict=True) if ok]
                except RejectedWrite as exc:
                    rejected = exc
            bad = todo[rejected.index]
            if atomic or bad.inst is None or bad.creating:
                raise ValidationError(
                    f"{bad.label}: cannot be stored: "
                    f"{steps.safe_text(_describe(rejected.cause))}{_batch(bad.label)}"
                ) from None
            assert bad.decision is not None  # not a bulk call's: a decision and its env
            assert bad.env is not None
            fallback = bad.decision.fallback
            if fallback is steps.Fallback.LAST_RESORT:
                if not group:
                    raise rejected
                # Even the last resort was rejected: leave the instance alone here.
                self._poison(bad.write.instance_id, rejected.cause)
                self.locks.release(bad.token)
                del todo[rejected.index]
                rejected = None
                continue
            if fallback is steps.Fallback.FAILURE:
                decision = steps.park_last_resort(bad.inst, bad.env)
            else:
                decision = self._rejected(bad.job, bad.inst, rejected.cause, bad.env)
            todo[rejected.index] = bad._replace(
                write=_write(bad.env, bad.inst, decision, None, bad.job.version),
                decision=decision,
            )
            rejected = None

    # -- one step -------------------------------------------------------------------------

    def run(
        self,
        kind: str,
        job_name: str,
        user_id: str,
        msg: Message,
        *,
        wait: bool = True,
        queue_busy: bool = False,
        key: str | None = None,
        job: Definition | None = None,
    ) -> StepOutcome | None:
        """Run one step now, in this process: claim, load, step, commit, after.

        Returns the decision and the row it was computed from; ``None`` when ``wait=False``
        and the instance is busy. With ``queue_busy`` (``add``) an instance whose step runs
        elsewhere is not waited for: the event is queued for its next step (``enqueue``) and
        the outcome says how many wait and when the first and last were added.

        Raises:
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            ExecutionError: ``send``/``add``'s handler raised and nothing changed.
            DuplicateEventError: the idempotency key was taken meanwhile.
            ValidationError: the call's own values cannot be stored; nothing changed.
            StorageError: the database failed and the step was not acknowledged. The live
                database is unchanged; only if the failure hit the commit's final fsync can
                the step still appear after a crash, so retry add/send with the same ``key``.
        """
        instance_id = instance_id_of(kind, job_name, user_id)
        job = job or self._job_for(instance_id, job_name, kind)
        return self._one(
            instance_id, job_name, user_id, job, msg, wait=wait, queue_busy=queue_busy, key=key
        )

    def _one(
        self,
        instance_id: str,
        job_name: str,
        user_id: str,
        job: Any,
        msg: Message,
        *,
        wait: bool = True,
        queue_busy: bool = False,
        key: str | None = None,
    ) -> StepOutcome | None:
        """The pipeline for one step: claim, load, step, commit, after (see ``run``)."""
        slot = None
        if job.concurrency is not None and isinstance(msg, _COUNTED):
            slot = self.gate.wait_slot(instance_id, job_name, job, self.wait_timeout)
        try:
            return self._claimed_one(
                instance_id, job_name, user_id, job, msg, wait, queue_busy, key
            )
        finally:
            self.gate.leave(slot)

    def _claimed_one(
        self,
        instance_id: str,
        job_name: str,
        user_id: str,
        job: Any,
        msg: Message,
        wait: bool,
        queue_busy: bool,
        key: str | None,
    ) -> StepOutcome | None:
        token = self._claim(instance_id, wait and not queue_busy)
        if token is None:
            if not queue_busy:
                return None
            assert isinstance(msg, steps.Add)
            # A step of this instance (a flush) runs elsewhere: queue for the next batch.
            count, first, last = self.store.enqueue(
                instance_id, job_name, user_id, msg.text, key, self.clock.time(), job.version
            )
            if self.hooks.waker is not None:
                self.hooks.waker.poke()
            return StepOutcome(None, None, queued=count, added=(first, last))
        # The single step is written out flat (the hot path of every client call): the
        # ``_Pending`` and the rejected-write loop of ``_commit`` only when a write is refused.
        store = self.store
        try:
            if job.kind == "debounce":
                inst, queued = store.load_with_queue(instance_id)
            else:
                inst, queued = store.load(instance_id), []
            env = self._env(instance_id, job_name, user_id, queued)
            creating = isinstance(msg, steps.CREATING)
            if inst is None and creating:
                env = env._replace(base_step=store.last_step(instance_id))
            decision, write = self._stepped(job, inst, msg, env, key=key)
            if write is None:
                return StepOutcome(decision, inst)  # the claim is released below
            self.locks.release_at_commit(token)  # (released below in any case)
            if self.hooks.waker is not None and _wakes(write):
                self.hooks.waker.poke_at_commit()  # (``_after_one`` pokes in any case)
            try:
                applied = store.commit((write,), self.clock.time(), self.history_limit)[0]
            except RejectedWrite as rejected:
                pending = _Pending(token, write, decision, inst, job, env, instance_id, creating)
                done = self._commit([pending], rejected=rejected)
                applied = bool(done)
                if applied:
                    decision, write = done[0].decision, done[0].write  # type: ignore[assignment]
            if not applied:
                raise InvalidStateError(
                    f"{instance_id}: this step lost its claim on the instance (e.g. its "
                    "database session ended) and another step changed the instance meanwhile; "
                    "this step was not committed"
                )
        finally:
            self.locks.release(token)
        self._after_one(write, decision)
        return StepOutcome(decision, inst)

    def run_many(
        self,
        kind: str,
        job_name: str,
        job: Definition,
        items: Sequence[tuple[str, Message, str | None]],
        *,
        queue_busy: bool = False,
        skip_duplicates: bool = False,
    ) -> list[StepOutcome]:
        """Run many client steps and commit them in ONE transaction (bulk calls).

        ``items`` are ``(user_id, message, key)``; each is its own step with the single call's
        semantics, applied in order (items for one id each see the one before). Claims are
        taken in one fixed order (by instance id) so that two bulk calls never deadlock.
        With ``queue_busy`` (``add_many``) an instance whose step runs elsewhere is not waited
        for: its events are queued (in order) for its next step. All or nothing: the first
        item whose handler raises, whose key is taken, or whose values cannot be stored
        aborts the call and nothing is stored -- except, with ``skip_duplicates``, an item
        whose key was already accepted (or repeats one earlier in the call): it is skipped
        (no step runs for it) and the others go on.

        Returns a ``StepOutcome`` per item, in order.

        Raises:
            ExecutionError: an item's handler raised (the message names its index and id).
            DuplicateEventError: an item's key was already accepted (index and id named).
            ValidationError: an item's values cannot be stored (index and id named), or the
                items name more than ``BULK_MAX_INSTANCES`` distinct instances.
            InstanceBusyError: another step held an instance past ``wait_timeout``.
            StorageError: the database failed; nothing of the batch was stored.
        """
        ids = {user_id: instance_id_of(kind, job_name, user_id) for user_id, _, _ in items}
        distinct = set(ids.values())
        if len(distinct) > BULK_MAX_INSTANCES:
            raise ValidationError(
                f"a bulk call takes at most {BULK_MAX_INSTANCES:,} distinct instances (it "
                f"holds each one's claim until its one commit); these items name "
                f"{len(distinct):,} of {job_name!r}: split them into calls of at most "
                f"{BULK_MAX_INSTANCES:,} instances; nothing was stored"
            )
        for instance_id in distinct:
            if self._running or self._pending or self._bulk_held:
                self._reentered(instance_id)
        tokens = self._bulk_held = {}
        queued_ids: set[str] = set()
        try:
            ordered = sorted(distinct)  # claims in one fixed order: no deadlock
            # All at once first (one round trip on PostgreSQL); of what was granted, only
            # the run before the first refusal is kept: the rest is claimed in order, waiting
            # (never wait while holding a claim later in the order).
            if len(ordered) > 1:
                granted = self.locks.try_acquire_many(ordered)
                for instance_id, token in zip(ordered, granted, strict=True):
                    if token is None and not queue_busy:
                        break
                    if token is None:  # add_many never waits: busy elsewhere, it queues
                        queued_ids.add(instance_id)
                    else:
                        tokens[instance_id] = token
                if not queue_busy:
                    self.locks.release_many([t for t in granted[len(tokens) :] if t is not None])
            start = len(tokens) + len(queued_ids)
            for instance_id in ordered[start:]:
                token = self._claim(instance_id, not queue_busy)
                if token is None:
                    queued_ids.add(instance_id)
                    continue
                tokens[instance_id] = token
            busy = queued_ids
            for attempt in range(_BULK_ATTEMPTS):
                queued_ids = set(busy)  # the steps add the ids whose later items must queue
                results, todo = self._bulk_steps(
                    kind, job_name, job, items, ids, queued_ids, skip_duplicates
                )
                if not todo:
                    break
                try:
                    self._commit(todo, atomic=True)
                    break
                except FencedOut as fenced:
                    index = todo[fenced.index].item
                    user_id, _, key = items[index]
                    if key is not None and self.store.has_key(ids[user_id], key, self.clock.time()):
                        if skip_duplicates and attempt + 1 < _BULK_ATTEMPTS:
                            # Taken meanwhile (an ``add`` queued its event behind our claim):
                            # step the batch again, skipping it (handlers run at least once).
                            continue
                        raise DuplicateEventError(
                            f"item {index} ({ids[user_id]}): an event with key {key!r} was "
                            "already accepted; nothing of the batch was stored"
                        ) from None
                    raise InvalidStateError(
                        f"item {index} ({ids[user_id]}): the claim on the instance was lost "
                        "(e.g. its database session ended) and another step changed the "
                        "instance meanwhile; nothing of the batch was stored"
                    ) from None
        finally:
            self._bulk_held = {}
            self.locks.release_many(list(tokens.values()))
        self._after([p for p in todo if p.decision is not None])
        if queued_ids and self.hooks.waker is not None:
            self.hooks.waker.poke()
        return results

    def _bulk_steps(
        self,
        kind: str,
        job_name: str,
        job: Definition,
        items: Sequence[tuple[str, Message, str | None]],
        ids: dict[str, str],
        queued_ids: set[str],
        skip_duplicates: bool,
    ) -> tuple[list[StepOutcome], list[_Pending]]:
        """The steps of a bulk call, under its claims: the results and the steps to commit
        (each with the index of its item), in item order."""
        # Every row (and its queue) in one read, and where new instances' steps go on from.
        fresh = [i for i in dict.fromkeys(ids.values()) if i not in queued_ids]
        loaded = self.store.load_many(fresh, with_queue=kind == "debounce")
        rows: dict[str, Instance | None] = {i: loaded[i][0] for i in fresh}
        pending_queues: dict[str, Sequence[Any]] = {i: loaded[i][1] for i in fresh}
        last_steps = self.store.last_steps([i for i in fresh if rows[i] is None])
        queue_counts: dict[str, int] = {}
        results: list[StepOutcome] = []
        todo: list[_Pending] = []
        keys: set[tuple[str, str]] = set()
        now = self.clock.time()
        for index, (user_id, msg, key) in enumerate(items):
            instance_id = ids[user_id]
            label = f"item {index} ({instance_id})"
            if key is not None:
                if (instance_id, key) in keys or self.store.has_key(instance_id, key, now):
                    if skip_duplicates:
                        results.append(StepOutcome(None, None, skipped=True))
                        continue
                    raise DuplicateEventError(
                        f"{label}: an event with key {key!r} was already accepted; nothing of "
                        "the batch was stored"
                    )
                keys.add((instance_id, key))
            if instance_id in queued_ids:
                # Busy elsewhere (add_many only): queue, in order, for its next step.
                assert isinstance(msg, steps.Add)
                queue_counts[instance_id] = queue_counts.get(instance_id, 0) + 1
                enqueue = Write.enqueue(instance_id, job_name, user_id, msg.text, key, job.version)
                todo.append(_Pending(0, enqueue, None, None, job, None, label, True, index))
                results.append(StepOutcome(None, None, queued=queue_counts[instance_id]))
                continue
            queued = pending_queues.pop(instance_id, ())  # the first step of an id folds them
            inst = rows[instance_id]
            env = self._env(instance_id, job_name, user_id, queued)
            if inst is None and isinstance(msg, steps.CREATING):
                # after the last step its id had (this batch's purges included)
                env = env._replace(base_step=last_steps.get(instance_id, 0))
            decision, write = self._stepped(job, inst, msg, env, key=key, label=label)
            results.append(StepOutcome(decision, inst))
            if write is None:
                continue
            todo.append(_Pending(0, write, decision, inst, job, env, label, True, index))
            rows[instance_id] = decision.instance
            last_steps[instance_id] = (
                decision.instance.step if decision.instance is not None else write.expected_step + 1
            )
            if decision.requeue is not None or (
                decision.instance is None and kind == "debounce" and decision.requeued
            ):
                # Events wait in the queue behind this step: the rest of this id's items
                # queue behind them (order kept), for its next step.
                queued_ids.add(instance_id)
        return results, todo

    def _reentered(self, instance_id: str) -> None:
        """A client call made from inside a handler (fan-out): never wait for ourselves.

        Raises:
            InvalidStateError: the call is on the instance whose handler is running.
        """
        if instance_id in self._bulk_held:
            raise InvalidStateError(
                f"{instance_id}: a handler called the client on an instance of the bulk call "
                "it runs in; the batch holds that instance until it commits"
            )
        if instance_id in self._running:
            raise InvalidStateError(
                f"{instance_id}: a handler called the client on its own instance; a step "
                "cannot wait for itself (change ctx.state, or use ctx.schedule()/"
                "ctx.terminate() instead)"
            )
        if self._pending:
            # Steps this engine finished earlier in the same run_due hold their claims until
            # the group commits: commit them now, so the call can claim any of them.
            self._commit_pending()
        # Claims taken ahead for steps not run yet: drop them, so the call can claim any of them.
        self._drop_ahead()

    def _drop_ahead(self) -> None:
        """Release the claims run_due took ahead for steps not run yet (it claims those
        instances again when it reaches them)."""
        if self._ahead:
            ahead, self._ahead = self._ahead, {}
            self.locks.release_many([entry[0] for entry in ahead.values() if entry is not None])

    def _job_for(self, instance_id: str, job_name: str, kind: str) -> Definition:
        job = self.registry.get(job_name)
        if job is None or job.kind != kind:
            raise JobNotFoundError(
                f"{instance_id}: no {kind} job named {job_name!r} is registered "
                f"(registered: {', '.join(sorted(self.registry)) or 'none'})"
            )
        return job

    # -- due alarms, group-committed ------------------------------------------------------

    def run_due(
        self,
        *,
        only: Sequence[str] | None = None,
        busy: list[str] | None = None,
        max_passes: int = steps.CATCH_UP_ALL_LIMIT + 2,
        hooks: Hooks | None = None,
        held: dict[str, float | None] | None = None,
    ) -> int:
        """Run every step whose alarm is due now; returns how many steps committed.

        ``only`` restricts the run to those instance ids (daemon workers); instances whose
        claim another process holds are skipped and, if ``busy`` is given, listed there.
        Paused instances and jobs are skipped. A due step that flow control holds back (its
        job's slots are taken, or its rate budget is spent) stays due, and if ``held`` is
        given it maps its instance id to when the budget refills (``None``: when a slot
        frees, a time nobody knows). Steps of jobs with a ``priority`` go first.
        ``hooks`` replace the engine's for this call (the steps of handlers' own client calls
        included).

        Raises:
            StorageError: a commit failed; the steps of that group will run again.
        """
        self._held_jobs, self._held = {}, ({} if held is None else held)
        with self._hooks_for(hooks):
            return self._run_due(only, busy, max_passes)

    @contextlib.contextmanager
    def _hooks_for(self, hooks: Hooks | None) -> Generator[None]:
        """A call's own hooks in place of the engine's while it runs."""
        saved, self.hooks = self.hooks, hooks or self.hooks
        try:
            yield
        finally:
            self.hooks = saved

    def _run_due(self, only: Sequence[str] | None, busy: list[str] | None, max_passes: int) -> int:
        total = 0
        stepped: dict[str, int] = {}
        # What is due when the call starts: a handler slower than its schedule must not keep
        # one call running pass after pass.
        cutoff = self.clock.time() + steps.RESOLUTION
        if only is not None:
            # Handed out by a daemon's read, which may predate a pause.
            paused = self.store.paused_targets()
            if paused:
                only = [i for i in only if i not in paused and _candidate(i).job not in paused]
        for _ in range(max_passes):
            held_jobs = len(self._held_jobs)
            if only is None:
                # The id names the kind and the job; the row is read once, after the claim.
                # Jobs held by flow control are read past: they never crowd out the others.
                prefixes = self._unheld_prefixes()
                if not prefixes:
                    break
                ids = self.store.due_ids(cutoff, GROUP_MAX_STEPS, prefixes)
                candidates = [_candidate(i) for i in ids]
                if self.gate.priorities:  # higher priority first, then as read (earliest due)
                    priority = self.gate.priorities
                    candidates.sort(key=lambda c: -priority.get(c.job, 0))
            else:
                candidates = [_candidate(i) for i in only]
            progressed = self._run_rows(candidates, stepped, busy)
            total += progressed
            # Loop while steps made more work due now (catch_up="all", zero-delay retries),
            # or a job was held (the steps behind it are read next).
            if only is not None or (not progressed and len(self._held_jobs) == held_jobs):
                break
        return total

    def _unheld_prefixes(self) -> tuple[str, ...]:
        if not self._held_jobs:
            return self.prefixes
        return tuple(p for p in self.prefixes if p.split(":")[1] not in self._held_jobs)

    def _run_rows(
        self,
        rows: Sequence[_Candidate],
        stepped: dict[str, int],
        busy: list[str] | None,
    ) -> int:
        # ``self._pending``: finished steps awaiting the group commit, claims held. A handler's
        # client call may commit them early (``_reentered``), so the list lives on the engine.
        self._committed = 0
        self._group_started = time.perf_counter()
        locks = self.locks
        step_seconds = self._step_seconds
        poisoned = self._poisoned
        ahead = locks.batch_claims
        gate = self.gate
        try:
            for position, candidate in enumerate(rows):
                instance_id = candidate.instance_id
                if stepped.get(instance_id, 0) > steps.CATCH_UP_ALL_LIMIT:
                    continue
                job_name = candidate.job
                job = self.registry.get(job_name)
                if job is None or job.kind != candidate.kind or instance_id in poisoned:
                    continue  # not this process's job: leave it for one that knows it
                if job_name in self._held_jobs:  # flow control holds its job: not claimed
                    self._held[instance_id] = self._held_jobs[job_name]
                    continue
                loaded: tuple[Instance | None, list[Any]] | None = None
                if ahead:
                    if instance_id not in self._ahead:
                        self._claim_ahead(rows, position, stepped)
                    entry = self._ahead.pop(instance_id, None)
                    token, loaded = (None, None) if entry is None else (entry[0], entry[1:])
                else:
                    token = locks.try_acquire(instance_id)
                if token is None:
                    if busy is not None:
                        busy.append(instance_id)
                    continue
                try:
                    # Re-read now that the claim is ours: another process may have stepped it
                    # (claims taken ahead: read in one statement after the claims).
                    inst, queued = (
                        self._load(instance_id, candidate.kind) if loaded is None else loaded
                    )
                    if inst is None or not steps.is_due(inst, self.clock.time()):
                        locks.release(token)
                        continue
                    slot = None
                    if gate.kept is not None:
                        gate.drop_kept(unless=job_name)  # another job's step: free its slot
                    if job_name in gate.limited:
                        admitted, slot, retry_at = gate.admit(self.store, job_name, job, self.clock)
                        if not admitted:  # stays due, untouched: its due time is its place
                            locks.release(token)
                            self._held_jobs[job_name] = self._held[instance_id] = retry_at
                            continue
                    slow = step_seconds.get(job_name, 0.0) > SLOW_STEP
                    if self._pending and (slow or self._someone_waits_for(self._pending)):
                        # Commit finished steps before a handler that may take a while (its
                        # job was slow before), or when a caller waits for one of them: their
                        # claims must not wait for another instance's handler.
                        self._commit_pending()
                    if self._ahead and locks.anyone_waiting():
                        # A caller waits for a claim this engine holds, maybe one taken ahead:
                        # it must not wait for the handlers of the instances before it.
                        self._drop_ahead()
                    if self.hooks.before_step is not None:
                        self.hooks.before_step(instance_id, job.timeout, inst.step, inst.due_at)
                    env = self._env(instance_id, inst.job, inst.user_id, queued)
                    started = time.perf_counter()
                    try:
                        decision, write = self._stepped(job, inst, steps.Alarm(), env, contain=True)
                    except BaseException:
                        gate.leave(slot)
                        raise
                    gate.keep(job_name, slot)  # its handlers are done: for the job's next step
                    took = time.perf_counter() - started
                    step_seconds[job_name] = 0.8 * step_seconds.get(job_name, took) + 0.2 * took
                except BaseException:
                    locks.release(token)
                    raise
                if write is None:
                    locks.release(token)
                    continue
                stepped[instance_id] = stepped.get(instance_id, 0) + 1
                self._pending.append(
                    _Pending(token, write, decision, inst, job, env, instance_id, False)
                )
                if (
                    len(self._pending) >= GROUP_MAX_STEPS
                    or time.perf_counter() - self._group_started > GROUP_MAX_SECONDS
                ):
                    self._commit_pending()
            self._commit_pending()
        finally:
            pending, self._pending = self._pending, []
            for item in pending:
                locks.release(item.token)
            self._drop_ahead()
            gate.drop_kept()
        return self._committed

    def _claim_ahead(
        self, rows: Sequence[_Candidate], position: int, stepped: dict[str, int]
    ) -> None:
        """Claim ``rows[position]`` and up to ``CLAIM_AHEAD - 1`` runnable candidates after it
        in one call, then read the granted ones in one statement (after the claims, as a
        single step reads after its claim). A job known to be slow is claimed alone: its
        handler would keep the others' claims waiting."""
        chunk: list[_Candidate] = []
        for candidate in rows[position:]:
            instance_id = candidate.instance_id
            job = self.registry.get(candidate.job)
            if (
                job is None or job.kind != candidate.kind or instance_id in self._poisoned
                or instance_id in self._ahead
                or stepped.get(instance_id, 0) > steps.CATCH_UP_ALL_LIMIT
            ):  # fmt: skip
                continue
            if self._step_seconds.get(candidate.job, 0.0) > SLOW_STEP:
                if not chunk:
                    chunk.append(candidate)
                break
            chunk.append(candidate)
            if len(chunk) >= CLAIM_AHEAD:
                break
        ids = [c.instance_id for c in chunk]
        tokens = self.locks.try_acquire_many(ids)
        granted = [(i, t) for i, t in zip(ids, tokens, strict=True) if t is not None]
        try:
            debounce = any(c.kind == "debounce" for c in chunk)
            found = self.store.load_many([i for i, _ in granted], with_queue=debounce)
        except BaseException:
            self.locks.release_many([t for _, t in granted])
            raise
        for instance_id, token in zip(ids, tokens, strict=True):
            if token is None:
                self._ahead.setdefault(instance_id, None)
            else:
                inst, queued = found[instance_id]
                self._ahead[instance_id] = (token, inst, queued)

    def _someone_waits_for(self, pending: list[_Pending]) -> bool:
        locks = self.locks
        # One fcntl call answers "does anybody wait for anything?"; only then look closer.
        return locks.anyone_waiting() and any(locks.waited_for(p.token) for p in pending)

    def _commit_pending(self) -> None:
        pending, self._pending = self._pending, []
        self._committed += self._commit_group(pending)
        self._group_started = time.perf_counter()

    def _commit_group(self, pending: list[_Pending]) -> int:
        """Commit the pending steps in one transaction (``_commit``); release their claims."""
        if not pending:
            return 0
        try:
            done = self._commit(pending, group=True)
        finally:
            self.locks.release_many([item.token for item in pending])
        self._after(done)
        return len(done)

    def _rejected(self, job: Any, inst: Instance, cause: BaseException, env: Env) -> Decision:
        """The decision that records ``inst``'s step as failed because durajobs could not
        finish or store it; the last resort if even that cannot be built."""
        log.error(
            "durajobs: %s: could not finish this step (recorded as its failure): %s",
            inst.instance_id, steps.safe_text(_describe(cause)),
        )  # fmt: skip
        try:
            return steps.finishing_failure(job, inst, cause, env)
        except Exception:  # even the failure could not be built: park with a fixed text
            return steps.park_last_resort(inst, env)

    def _poison(self, instance_id: str, cause: BaseException) -> None:
        self._poisoned.add(instance_id)
        log.error(
            "durajobs: %s: its step cannot be stored, not even as a failure (%s); this process "
            "skips it until restarted", instance_id, steps.safe_text(_describe(cause)),
        )  # fmt: skip

    def time_out(
        self, instance_id: str, seconds: float, step: int | None = None, hooks: Hooks | None = None
    ) -> bool:
        """Record that the due step of ``instance_id`` was stopped after ``seconds``.

        The daemon calls this after killing a worker whose handler ran past the job's
        ``timeout``: the step counts as a failed attempt (retry / exhaustion rules apply).
        ``step`` is the row's step when the stopped step began: if the instance is no longer
        at it, nothing is recorded (checked under the claim). Returns whether a failure was
        committed (``False`` if the instance is gone, not due, moved on, or held elsewhere).
        ``hooks``: as for ``run_due``.

        Raises:
            StorageError: the database failed.
        """
        kind, job_name, user_id = instance_id.split(":", 2)
        message = steps.TimedOut(seconds, step)
        with self._hooks_for(hooks):
            outcome = self.run(kind, job_name, user_id, message, wait=False)
        return outcome is not None and outcome.decision is not None and outcome.decision.changed

    def apply(self, msg: Message, instance_id: str) -> Decision:
        """Run a handler-free step (terminate, clear, resume, request) by instance id.

        Used by the CLI, which has no registry: only messages that call no handler work here.

        Raises:
            InstanceNotFoundError: resume of a missing instance.
            InvalidStateError: resume of an instance that is not parked.
            InstanceBusyError: another step held the instance past ``wait_timeout``.
            StorageError: the database failed.
        """
        kind, _, names = instance_id.partition(":")
        job_name, _, user_id = names.partition(":")
        outcome = self._one(instance_id, job_name, user_id, _HandlerFree(kind), msg)
        assert outcome is not None
        assert outcome.decision is not None
        return outcome.decision

    # -- after commit ---------------------------------------------------------------------

    def _after_one(self, write: Write, decision: Decision) -> None:
        """``_after`` of a single step (its claim released)."""
        hooks = self.hooks
        if hooks.waker is not None and _wakes(write):
            hooks.waker.poke()
        if hooks.on_done is not None:
            hooks.on_done([(write, decision)])
        if hooks.on_records is not None:
            self._hand_records([write])

    def _after(self, done: Sequence[_Pending]) -> None:
        """After a commit, its claims released: wake a sleeping daemon if an alarm may have
        changed, and hand the steps to the ``on_done`` hook and their records to
        ``on_records``."""
        if not done:
            return
        waker = self.hooks.waker
        if waker is not None and any(_wakes(p.write) for p in done):
            waker.poke()
        if self.hooks.on_done is not None:
            self.hooks.on_done([(p.write, p.decision) for p in done if p.decision is not None])
        if self.hooks.on_records is not None:
            self._hand_records([p.write for p in done])

    def _hand_records(self, writes: Sequence[Write]) -> None:
        """The writes' history records, as dicts, to the ``on_records`` hook."""
        hook = self.hooks.on_records
        assert hook is not None
        at = datetime.fromtimestamp(self.clock.time(), UTC).isoformat()
        records: list[dict[str, Any]] = []
        for write in writes:
            step_no = write.row.step if write.row is not None else write.expected_step + 1
            for event, attempt, duration_ms, error, data in write.records:
                records.append(
                    {
                        "event": event,
                        "instance_id": write.instance_id,
                        "kind": write.kind,
                        "job": write.job,
                        "id": write.user_id,
                        "step": step_no,
                        "attempt": attempt,
                        "duration_ms": duration_ms,
                        "error": error,
                        "data": data,
                        "at": at,
                    }
                )
        if records:
            hook(records)


def _wakes(write: Write) -> bool:
    """Whether a committed write may have changed the earliest alarm: a daemon is poked. A
    purged Debounce row may have revived queued events."""
    row = write.row
    return row.due_at is not None if row is not None else write.kind == "debounce"


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ raises
        text = "<str() failed>"
    return f"{type(exc).__name__}: {text}"


def _write(
    env: Env, inst: Instance | None, decision: Decision, key: str | None, version: int
) -> Write:
    """The write a step's decision describes (``inst``: the row it was computed from, read as
    the definition's ``version``, which a new row and a requeued event are written with)."""
    row = decision.instance
    if inst is None and row is not None:
        row = row._replace(version=version)
    return Write.step(
        env.instance_id, env.job_name, env.user_id, env.base_step if inst is None else inst.step,
        row, decision.records, decision.consumed, key, decision.requeue, inst is None, version,
    )  # fmt: skip


def _park_unreadable(inst: Instance, env: Env, error: ValidationError) -> Decision:
    """Park an instance whose stored state or queued events this code cannot read: status
    failed with the error, no alarm; the state, its version and the queue stay as stored
    (``durajobs retry`` tries again, after a deploy that can read them)."""
    text = steps.safe_text(str(error))
    parked = steps.park_last_resort(inst, env)  # the row as stored, parked
    assert parked.instance is not None
    log.error("durajobs: %s: parked: %s", inst.instance_id, text)
    return parked._replace(
        instance=parked.instance._replace(last_error=text),
        records=[("job.parked", inst.attempt, None, text, None)],
        error=text,
    )


def _batch(label: str) -> str:
    """What a bulk call's errors add (its items' labels say ``item N``)."""
    return "; nothing of the batch was stored" if label.startswith("item ") else ""


class StepOutcome(NamedTuple):
    """What a client step came to (``Engine.run``; per item, ``Engine.run_many``)."""

    decision: Decision | None  # None: queued behind a running step, or skipped
    before: Instance | None  # the row its step was computed from
    queued: int = 0  # queued behind a running step: bulk, its 1-based position among this
    # call's queued events of the instance; single (``add``), the events queued now
    skipped: bool = False  # its key was already accepted (skip_duplicates): nothing ran
    added: tuple[float, float] | None = None  # single, queued: the first and last added_at


class _Pending(NamedTuple):
    """A step between its decision and its commit; its claim (``token``) is held."""

    token: int  # 0: a bulk call's (it holds the claims itself)
    write: Write
    decision: Decision | None  # None: a bulk call's queued event
    inst: Instance | None
    job: Any
    env: Env | None
    label: str  # how errors name it: the instance id, or a bulk call's "item N (id)"
    creating: bool  # a client's creating message (or a bulk item): a rejection refuses it
    item: int = 0  # a bulk call's item


class _Candidate(NamedTuple):
    """An instance to try in ``run_due``: what claiming it needs, before any read."""

    instance_id: str
    kind: str
    job: str


def _candidate(instance_id: str) -> _Candidate:
    kind, _, rest = instance_id.partition(":")
    return _Candidate(instance_id, kind, rest.partition(":")[0])


class _HandlerFree:
    """A stand-in definition for handler-free steps (the CLI has no user code)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.retry = None
        self.on_error = None
        self.version = 1  # reads nothing, writes no new row nor event
        self.concurrency = None  # its steps run no handler: no slot


# Operators' actions read neither the state nor the queue: they work on an unreadable instance
# (terminate it, clear its batch, resume it after a deploy that can read it).
_READS_NOTHING = (steps.Terminate, steps.Resume, steps.Request, steps.Clear)
# A client's calls whose step runs an alarm's handlers: they take a slot of a job with
# ``concurrency`` (``start``, ``send`` and ``add`` run only their inline handlers: they do not).
_COUNTED = (steps.Trigger, steps.Flush)


def _no_codec(*_args: Any) -> Any:
    raise InvalidStateError("this step needs the application's job definitions")


_NO_CODEC = TypeCodec(None, _no_codec, _no_codec)
