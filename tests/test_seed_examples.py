"""The three examples of @durable-effect/jobs, re-created end to end in virtual time.

(a) a token refresher (Continuous), (b) a webhook batcher (Debounce), (c) an order processor
with payment reminders and delivery checks (Task). Each test walks a FakeClock through the
whole life of an instance and asserts every state change: results, status, state, alarms,
side effects and history.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from durajobs import (
    AddResult,
    Backoff,
    ClearResult,
    Continuous,
    ContinuousStatus,
    Debounce,
    FakeClock,
    FlushResult,
    Jobs,
    Retry,
    SendResult,
    StartResult,
    Task,
    TaskStatus,
    TerminateResult,
    TriggerResult,
    every,
)

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def names(jobs: Jobs, instance_id: str) -> list[str]:
    return [r.event for r in jobs.engine.store.history(instance_id, limit=1000)]


# =============================================================================================
# (a) Token refresher: Continuous, every 30 minutes, start immediately, exponential retry
# =============================================================================================


@attrs.define
class Tokens:
    access_token: str
    refresh_token: str
    expires_at: float = 0.0


class AuthServer:
    """A fake OAuth server: each refresh rotates both tokens; can be told to fail."""

    def __init__(self) -> None:
        self.issued = 0
        self.failures_left = 0
        self.calls: list[tuple[str, datetime, int]] = []  # (refresh token, scheduled_for, attempt)

    def refresh(self, refresh_token: str, when: datetime, attempt: int) -> tuple[str, str]:
        self.calls.append((refresh_token, when, attempt))
        if self.failures_left:
            self.failures_left -= 1
            raise ConnectionError("auth server unavailable")
        self.issued += 1
        return f"at_{self.issued}", f"rt_{self.issued}"


@pytest.fixture
def refresher(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Jobs, AuthServer]]:
    server = AuthServer()
    runs: list[tuple[int, int, bool]] = []

    def refresh(ctx: Any) -> None:
        runs.append((ctx.run_count, ctx.attempt, ctx.is_retry))
        access, rotated = server.refresh(ctx.state.refresh_token, ctx.scheduled_for, ctx.attempt)
        expires = ctx.scheduled_for + timedelta(hours=1)
        ctx.state = attrs.evolve(
            ctx.state, access_token=access, refresh_token=rotated, expires_at=expires.timestamp()
        )

    token_refresher = Continuous(
        state=Tokens,
        schedule=every("30 minutes"),
        execute=refresh,
        start_immediately=True,
        retry=Retry(
            max_attempts=3,
            delay=Backoff.exponential(base="1 second", max="30 seconds"),
            jitter=True,
        ),
    )
    jobs = Jobs(tmp_path / "jobs.db", {"token_refresher": token_refresher}, clock=clock)
    jobs.runs = runs  # type: ignore[attr-defined]
    yield jobs, server
    jobs.close()


def test_token_refresher_over_several_hours(
    refresher: tuple[Jobs, AuthServer], clock: FakeClock
) -> None:
    jobs, server = refresher
    client = jobs.continuous("token_refresher")
    iid = "continuous:token_refresher:user-123"

    # start runs the first refresh before it returns
    started = client.start("user-123", Tokens("", "rt_abc"))
    assert started.instance_id == iid
    assert started.created is True
    assert started.status == "running"
    assert server.calls == [("rt_abc", T0, 1)]
    assert client.get_state("user-123") == Tokens("at_1", "rt_1", at(hours=1).timestamp())
    assert client.status("user-123") == ContinuousStatus("running", 1, at(minutes=30), 1, None)

    # starting again changes nothing
    again = client.start("user-123", Tokens("other", "rt_other"))
    assert again == StartResult(iid, False, "running")
    assert client.get_state("user-123") == Tokens("at_1", "rt_1", at(hours=1).timestamp())

    # two hours of regular refreshes, each on the 30-minute grid
    for n in range(2, 6):
        clock.set(at(minutes=30 * (n - 1)))
        assert jobs.run_due() == 1
        assert jobs.run_due() == 0  # nothing else is due
        assert client.get_state("user-123") == Tokens(
            f"at_{n}", f"rt_{n}", at(minutes=30 * (n - 1), hours=1).timestamp()
        )
        assert client.status("user-123") == ContinuousStatus(
            "running", n, at(minutes=30 * n), 1, None
        )
    assert [c[1] for c in server.calls] == [at(minutes=30 * k) for k in range(5)]

    # the run at 2h30 fails twice, then succeeds on its third attempt
    server.failures_left = 2
    clock.set(at(minutes=150))
    assert jobs.run_due() == 1
    status = client.status("user-123")
    assert status.status == "running"
    assert status.run_count == 6
    assert status.attempt == 2
    assert status.last_error is not None
    assert "auth server unavailable" in status.last_error
    first_retry = status.next_run_at
    assert first_retry is not None
    assert at(minutes=150, seconds=0.9) <= first_retry <= at(minutes=150, seconds=1.1)
    assert client.get_state("user-123") == Tokens("at_5", "rt_5", at(minutes=180).timestamp())

    clock.set(first_retry)
    assert jobs.run_due() == 1
    status = client.status("user-123")
    assert status.attempt == 3
    assert status.run_count == 6
    second_retry = status.next_run_at
    assert second_retry is not None
    gap = (second_retry - first_retry).total_seconds()
    assert 1.8 <= gap <= 2.2  # exponential: 2 s, +-10 % jitter

    clock.set(second_retry)
    assert jobs.run_due() == 1
    assert client.get_state("user-123") == Tokens("at_6", "rt_6", at(minutes=210).timestamp())
    # back on the grid, no drift from the retries
    assert client.status("user-123") == ContinuousStatus("running", 6, at(minutes=180), 1, None)
    assert server.calls[-3:] == [
        ("rt_5", at(minutes=150), 1),
        ("rt_5", at(minutes=150), 2),
        ("rt_5", at(minutes=150), 3),
    ]
    assert jobs.runs[-3:] == [(6, 1, False), (6, 2, True), (6, 3, True)]  # type: ignore[attr-defined]

    clock.set(at(minutes=180))
    assert jobs.run_due() == 1
    assert client.status("user-123").run_count == 7

    # trigger: runs now and restarts the grid from now
    clock.set(at(minutes=185))
    assert client.trigger("user-123") == TriggerResult(True, False, False)
    assert client.get_state("user-123").access_token == "at_8"
    assert client.status("user-123") == ContinuousStatus("running", 8, at(minutes=215), 1, None)
    clock.set(at(minutes=210))
    assert jobs.run_due() == 0
    clock.set(at(minutes=215))
    assert jobs.run_due() == 1
    assert client.status("user-123").run_count == 9

    # terminate: the alarm is cancelled and the state purged (history keeps it)
    assert client.terminate("user-123", reason="user logged out") == TerminateResult(
        True, "user logged out"
    )
    assert client.status("user-123") == ContinuousStatus("not_found")
    assert client.get_state("user-123") is None
    assert jobs.next_alarm() is None
    clock.set(at(hours=10))
    assert jobs.run_due() == 0
    assert len(server.calls) == 11
    history = jobs.engine.store.history(iid, limit=1000)
    assert history[0].event == "job.started"
    assert [r.event for r in history].count("job.executed") == 9
    assert [r.event for r in history].count("job.failed") == 2
    final = history[-1]
    assert final.event == "job.terminated"
    data = json.loads(final.data)
    assert data["reason"] == "user logged out"
    assert data["final_state"]["access_token"] == "at_9"
    assert client.terminate("user-123") == TerminateResult(False, None)

    # the id can be started again, fresh
    assert client.start("user-123", Tokens("", "rt_new")).created is True
    assert client.status("user-123").run_count == 1


def test_token_refresher_exhausting_its_retries_terminates(
    refresher: tuple[Jobs, AuthServer], clock: FakeClock
) -> None:
    jobs, server = refresher
    client = jobs.continuous("token_refresher")
    client.start("user-9", Tokens("", "rt_abc"))
    server.failures_left = 3
    clock.set(at(minutes=30))
    for attempt in (1, 2, 3):
        assert jobs.run_due() == 1
        if attempt < 3:
            status = client.status("user-9")
            assert status.attempt == attempt + 1
            assert status.next_run_at is not None
            clock.set(status.next_run_at)
    assert client.status("user-9").status == "not_found"  # terminate: the default with retry
    recorded = names(jobs, "continuous:token_refresher:user-9")
    assert recorded[-2:] == ["job.retry_exhausted", "job.terminated"]


def test_token_refresher_first_run_failing_inside_start(
    refresher: tuple[Jobs, AuthServer], clock: FakeClock
) -> None:
    jobs, server = refresher
    client = jobs.continuous("token_refresher")
    server.failures_left = 1
    result = client.start("user-7", Tokens("", "rt_abc"))  # does not raise
    assert result.created is True
    assert result.retry_scheduled is True
    status = client.status("user-7")
    assert status.attempt == 2
    assert status.run_count == 1
    assert status.next_run_at is not None
    clock.set(status.next_run_at)
    assert jobs.run_due() == 1
    assert client.get_state("user-7") == Tokens("at_1", "rt_1", at(hours=1).timestamp())
    assert client.status("user-7") == ContinuousStatus("running", 1, at(minutes=30), 1, None)


# =============================================================================================
# (b) Webhook batcher: Debounce, reducer into a Batch, 5 s window, 3 events max
# =============================================================================================


@attrs.frozen
class WebhookEvent:
    type: str
    object_id: str


@attrs.define
class Batch:
    events: list[WebhookEvent] = attrs.Factory(list)
    first_type: str = ""


def collect(ctx: Any) -> Batch:
    if ctx.state is None:
        return Batch([ctx.event], ctx.event.type)
    return Batch([*ctx.state.events, ctx.event], ctx.state.first_type)


@pytest.fixture
def batcher(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Jobs, list[dict[str, Any]]]]:
    delivered: list[dict[str, Any]] = []

    def deliver(ctx: Any) -> None:
        delivered.append(
            {
                "id": ctx.id,
                "events": [e.object_id for e in ctx.state.events],
                "reason": ctx.flush_reason,
                "count": ctx.event_count,
                "started_at": ctx.started_at,
            }
        )

    webhooks = Debounce(
        event=WebhookEvent,
        state=Batch,
        on_event=collect,
        execute=deliver,
        flush_after="5 seconds",
        max_events=3,
    )
    jobs = Jobs(tmp_path / "jobs.db", {"webhooks": webhooks}, clock=clock)
    yield jobs, delivered
    jobs.close()


def test_webhook_batcher(batcher: tuple[Jobs, list[dict[str, Any]]], clock: FakeClock) -> None:
    jobs, delivered = batcher
    client = jobs.debounce("webhooks")
    iid = "debounce:webhooks:shop-1"

    def ev(n: int) -> WebhookEvent:
        return WebhookEvent("order.updated" if n % 2 else "order.created", f"obj-{n}")

    # three events: the third reaches max_events and flushes inside add
    assert client.add("shop-1", ev(1)) == AddResult(iid, True, 1, at(seconds=5))
    status = client.status("shop-1")
    assert (status.status, status.event_count, status.started_at, status.will_flush_at) == (
        "debouncing",
        1,
        T0,
        at(seconds=5),
    )
    assert client.get_state("shop-1") == Batch([ev(1)], "order.updated")
    clock.set(at(seconds=1))
    assert client.add("shop-1", ev(2)) == AddResult(iid, False, 2, at(seconds=5))
    assert client.get_state("shop-1") == Batch([ev(1), ev(2)], "order.updated")
    assert delivered == []
    clock.set(at(seconds=2))
    third = client.add("shop-1", ev(3))
    assert (third.instance_id, third.created, third.event_count) == (iid, False, 3)
    assert delivered == [
        {
            "id": "shop-1",
            "events": ["obj-1", "obj-2", "obj-3"],
            "reason": "max_events",
            "count": 3,
            "started_at": T0,
        }
    ]
    assert client.status("shop-1").status == "not_found"
    assert client.get_state("shop-1") is None
    clock.set(at(seconds=5))
    assert jobs.run_due() == 0  # the first window's alarm went with the batch

    # a new batch; the 5 s alarm flushes it
    clock.set(at(seconds=6))
    assert client.add("shop-1", ev(4)) == AddResult(iid, True, 1, at(seconds=11))
    clock.set(at(seconds=10.999))
    assert jobs.run_due() == 0
    clock.set(at(seconds=11))
    assert jobs.run_due() == 1
    assert delivered[-1] == {
        "id": "shop-1",
        "events": ["obj-4"],
        "reason": "flush_after",
        "count": 1,
        "started_at": at(seconds=6),
    }
    assert client.status("shop-1").status == "not_found"

    # a manual flush, then the instance is purged and a second flush is empty
    clock.set(at(seconds=20))
    client.add("shop-1", ev(5))
    client.add("shop-2", ev(50))  # another shop: its own instance and window
    clock.set(at(seconds=21))
    client.add("shop-1", ev(6))
    assert client.flush("shop-1") == FlushResult(True, 2, "manual")
    assert delivered[-1]["events"] == ["obj-5", "obj-6"]
    assert delivered[-1]["reason"] == "manual"
    assert client.status("shop-1").status == "not_found"
    assert client.flush("shop-1") == FlushResult(False, 0, "empty")
    assert client.status("shop-2").event_count == 1

    # clear drops a batch without delivering it
    assert client.clear("shop-2") == ClearResult(True, 1)
    clock.set(at(minutes=5))
    assert jobs.run_due() == 0
    assert [d["events"] for d in delivered] == [
        ["obj-1", "obj-2", "obj-3"],
        ["obj-4"],
        ["obj-5", "obj-6"],
    ]
    assert names(jobs, iid) == [
        "debounce.started",
        "debounce.flushed",
        "debounce.started",
        "debounce.flushed",
        "debounce.started",
        "debounce.flushed",
    ]
    assert jobs.next_alarm() is None


# =============================================================================================
# (c) Order processor: Task with a union of events, reminders and delivery checks
# =============================================================================================


@attrs.frozen
class OrderPlaced:
    order_id: str
    customer: str
    amount: int


@attrs.frozen
class PaymentReceived:
    amount: int


@attrs.frozen
class Shipped:
    tracking: str


OrderEvent = OrderPlaced | PaymentReceived | Shipped


@attrs.define
class Order:
    order_id: str
    customer: str
    amount: int
    status: str = "awaiting_payment"
    paid: int = 0
    reminders_sent: int = 0
    tracking: str | None = None
    next_action: str | None = None
    delivery_checks: int = 0


MAX_REMINDERS = 3


class Shop:
    """The outside world of the order processor: a mailer and a carrier, both recorded."""

    def __init__(self) -> None:
        self.emails: list[tuple[str, str, str]] = []  # (customer, subject, step_key)
        self.delivered: set[str] = set()
        self.idle: list[tuple[str, str]] = []  # (order_id, status) at each on_idle

    def on_event(self, event: OrderEvent, ctx: Any) -> None:
        if isinstance(event, OrderPlaced):
            ctx.state = Order(event.order_id, event.customer, event.amount, next_action="reminder")
            ctx.schedule("5 minutes")
        elif isinstance(event, PaymentReceived):
            order = ctx.state
            paid = order.paid + event.amount
            if paid >= order.amount:
                ctx.state = attrs.evolve(order, paid=paid, status="paid", next_action=None)
                ctx.cancel_schedule()
            else:
                ctx.state = attrs.evolve(order, paid=paid)
        else:
            ctx.state = attrs.evolve(
                ctx.state, status="shipped", tracking=event.tracking, next_action="delivery_check"
            )
            ctx.schedule(timedelta(days=1))

    def execute(self, ctx: Any) -> None:
        order = ctx.state
        assert ctx.scheduled_at is None
        if order.next_action == "reminder":
            self.emails.append((order.customer, f"please pay order {order.order_id}", ctx.step_key))
            sent = order.reminders_sent + 1
            ctx.state = attrs.evolve(order, reminders_sent=sent)
            if sent < MAX_REMINDERS:
                ctx.schedule("5 minutes")
            else:
                self.emails.append((order.customer, f"order {order.order_id} cancelled", ""))
                ctx.terminate("unpaid")
        elif order.next_action == "delivery_check":
            checks = order.delivery_checks + 1
            if order.tracking in self.delivered:
                self.emails.append((order.customer, f"order {order.order_id} delivered", ""))
                ctx.state = attrs.evolve(order, status="delivered", delivery_checks=checks)
                ctx.terminate("delivered")
            else:
                ctx.state = attrs.evolve(order, delivery_checks=checks)
                ctx.schedule(ctx.created_at + timedelta(days=1 + checks))

    def on_idle(self, ctx: Any) -> None:
        self.idle.append((ctx.state.order_id, ctx.state.status))


@pytest.fixture
def orders(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Jobs, Shop]]:
    shop = Shop()
    processor = Task(
        state=Order,
        event=OrderEvent,
        on_event=shop.on_event,
        execute=shop.execute,
        on_idle=shop.on_idle,
    )
    jobs = Jobs(tmp_path / "jobs.db", {"orders": processor}, clock=clock)
    yield jobs, shop
    jobs.close()


def test_order_processor_paid_shipped_delivered(
    orders: tuple[Jobs, Shop], clock: FakeClock
) -> None:
    jobs, shop = orders
    client = jobs.task("orders")
    iid = "task:orders:o-1"

    # placed: a payment reminder in 5 minutes
    placed = client.send("o-1", OrderPlaced("o-1", "ada@example.com", 100))
    assert placed == SendResult(iid, True, at(minutes=5))
    assert client.status("o-1") == TaskStatus("active", at(minutes=5), T0, 1, 0)
    assert client.get_state("o-1") == Order("o-1", "ada@example.com", 100, next_action="reminder")
    assert shop.idle == []

    # the reminder fires and schedules the next one
    clock.set(at(minutes=4, seconds=59))
    assert jobs.run_due() == 0
    clock.set(at(minutes=5))
    assert jobs.run_due() == 1
    assert shop.emails == [("ada@example.com", "please pay order o-1", shop.emails[0][2])]
    assert shop.emails[0][2].startswith(iid)
    assert client.status("o-1") == TaskStatus("active", at(minutes=10), T0, 1, 1)
    assert client.get_state("o-1").reminders_sent == 1

    # a partial payment keeps the reminder; the full payment cancels it
    clock.set(at(minutes=6))
    assert client.send("o-1", PaymentReceived(40)).scheduled_at == at(minutes=10)
    assert client.get_state("o-1").paid == 40
    assert shop.idle == []
    clock.set(at(minutes=7))
    paid = client.send("o-1", PaymentReceived(60))
    assert paid == SendResult(iid, False, None)
    assert client.status("o-1") == TaskStatus("idle", None, T0, 3, 1)
    assert client.get_state("o-1") == Order(
        "o-1", "ada@example.com", 100, status="paid", paid=100, reminders_sent=1
    )
    assert shop.idle == [("o-1", "paid")]  # no alarm left: on_idle ran
    clock.set(at(minutes=30))
    assert jobs.run_due() == 0
    assert len(shop.emails) == 1  # the cancelled reminder never went out

    # shipped: a delivery check a day later, again a day later until delivered
    clock.set(at(hours=1))
    shipped = client.send("o-1", Shipped("TRK-1"))
    assert shipped.scheduled_at == at(hours=1, days=1)
    assert client.status("o-1") == TaskStatus("active", at(hours=1, days=1), T0, 4, 1)
    clock.set(at(hours=1, days=1))
    assert jobs.run_due() == 1  # not delivered yet
    assert client.get_state("o-1").delivery_checks == 1
    assert client.status("o-1") == TaskStatus("active", at(days=2), T0, 4, 2)
    assert len(shop.emails) == 1
    shop.delivered.add("TRK-1")
    clock.set(at(days=2))
    assert jobs.run_due() == 1
    assert shop.emails[-1] == ("ada@example.com", "order o-1 delivered", "")

    # delivered: terminated, purged, no on_idle after the terminate
    assert client.status("o-1") == TaskStatus("not_found")
    assert client.get_state("o-1") is None
    assert shop.idle == [("o-1", "paid")]
    assert jobs.next_alarm() is None
    recorded = jobs.engine.store.history(iid, limit=1000)
    events = [r.event for r in recorded]
    assert events[0] == "job.started"
    assert events.count("job.executed") == 3
    assert events.count("task.scheduled") == 4  # placed, reminder 2, shipped, 2nd check
    final = recorded[-1]
    assert final.event == "job.terminated"
    data = json.loads(final.data)
    assert data["reason"] == "delivered"
    assert data["final_state"]["status"] == "delivered"
    assert data["final_state"]["delivery_checks"] == 2


def test_order_processor_unpaid_order_is_cancelled_after_three_reminders(
    orders: tuple[Jobs, Shop], clock: FakeClock
) -> None:
    jobs, shop = orders
    client = jobs.task("orders")
    client.send("o-2", OrderPlaced("o-2", "bob@example.com", 10))
    for n in (1, 2, 3):
        clock.set(at(minutes=5 * n))
        assert jobs.run_due() == 1
        if n < MAX_REMINDERS:
            assert client.status("o-2") == TaskStatus("active", at(minutes=5 * (n + 1)), T0, 1, n)
    assert [subject for _, subject, _ in shop.emails] == [
        "please pay order o-2",
        "please pay order o-2",
        "please pay order o-2",
        "order o-2 cancelled",
    ]
    assert len({key for _, _, key in shop.emails[:3]}) == 3  # one step key per reminder
    assert client.status("o-2").status == "not_found"
    assert shop.idle == []
    final = jobs.engine.store.history("task:orders:o-2", limit=1000)[-1]
    assert json.loads(final.data)["reason"] == "unpaid"
    # the id is free again
    assert client.send("o-2", OrderPlaced("o-2", "bob@example.com", 10)).created is True


def test_order_processor_orders_are_independent(
    orders: tuple[Jobs, Shop], clock: FakeClock
) -> None:
    jobs, shop = orders
    client = jobs.task("orders")
    client.send("a", OrderPlaced("a", "a@example.com", 1))
    clock.set(at(minutes=1))
    client.send("b", OrderPlaced("b", "b@example.com", 2))
    clock.set(at(minutes=2))
    client.send("a", PaymentReceived(1))
    clock.set(at(minutes=6))
    assert jobs.run_due() == 1  # only b's reminder
    assert [c for c, _, _ in shop.emails] == ["b@example.com"]
    assert client.status("a").status == "idle"
    assert client.status("b").status == "active"
