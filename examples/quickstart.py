"""The durajobs quick start: the three job kinds on ./durajobs.db, in real time (~6 s).

Run it twice: the second run finds the state the first one left (durable), and the token
refresher's run count goes on from where it was.
"""

from __future__ import annotations

import sys
import time

import attrs

from durajobs import (
    Continuous,
    ContinuousContext,
    Debounce,
    DebounceContext,
    DebounceEventContext,
    Jobs,
    Task,
    TaskContext,
    every,
)


@attrs.define
class Tokens:
    access_token: str
    refresh_token: str
    refreshed: int = 0


def refresh(ctx: ContinuousContext[Tokens]) -> None:
    tokens = ctx.state
    ctx.state = attrs.evolve(
        tokens, access_token=f"at-{ctx.run_count}", refreshed=tokens.refreshed + 1
    )
    print(
        f"  [continuous] {ctx.instance_id}: run {ctx.run_count} -> access token at-{ctx.run_count}"
    )


@attrs.define
class Webhook:
    source: str
    body: str


def collect(ctx: DebounceEventContext[list[str]]) -> list[str]:
    return [*(ctx.state or []), ctx.event.body]


def process_batch(ctx: DebounceContext[list[str]]) -> None:
    print(
        f"  [debounce] {ctx.instance_id}: flushed {ctx.event_count} webhooks "
        f"({ctx.flush_reason}): {ctx.state}"
    )


@attrs.define
class Order:
    order_id: str
    paid: bool = False
    reminders: int = 0


@attrs.define
class Placed:
    order_id: str


@attrs.define
class Paid:
    order_id: str


def on_order_event(event: Placed | Paid, ctx: TaskContext[Order]) -> None:
    if isinstance(event, Placed):
        ctx.state = Order(event.order_id)
        ctx.schedule("2 seconds")
        print(f"  [task] {ctx.instance_id}: order placed, payment reminder in 2 s")
    elif isinstance(event, Paid):
        ctx.state = attrs.evolve(ctx.state, paid=True)
        ctx.cancel_schedule()
        print(f"  [task] {ctx.instance_id}: paid, reminder cancelled")


def remind(ctx: TaskContext[Order]) -> None:
    ctx.state = attrs.evolve(ctx.state, reminders=ctx.state.reminders + 1)
    print(f"  [task] {ctx.instance_id}: no payment yet -> reminder sent")


def order_idle(ctx: TaskContext[Order]) -> None:
    if ctx.state is not None and ctx.state.paid:
        print(f"  [task] {ctx.instance_id}: idle and paid -> done")
        ctx.terminate("completed")


jobs = Jobs(
    sys.argv[1] if len(sys.argv) > 1 else "durajobs.db",
    {
        "token_refresher": Continuous(state=Tokens, schedule=every("2 seconds"), execute=refresh),
        "webhooks": Debounce(
            event=Webhook,
            state=list[str],
            on_event=collect,
            execute=process_batch,
            flush_after="1 second",
            max_events=10,
        ),
        "orders": Task(
            state=Order,
            event=Placed | Paid,
            on_event=on_order_event,
            execute=remind,
            on_idle=order_idle,
        ),
    },
)


def main() -> None:
    print(f"durajobs quick start on {jobs.path}")
    refresher = jobs.continuous("token_refresher")
    started = refresher.start("user-123", Tokens("", "rt_abc"))
    print(f"start -> created={started.created}, status={started.status}")
    for i in range(3):
        jobs.debounce("webhooks").add("github", Webhook("github", f"push #{i}"))
    print("added 3 webhooks; they flush together 1 s after the first")
    jobs.task("orders").send("order-1", Placed("order-1"))
    jobs.task("orders").send("order-2", Placed("order-2"))
    deadline = time.time() + 5
    paid = False
    while time.time() < deadline:
        jobs.run_due()
        if not paid and time.time() > deadline - 4:
            jobs.task("orders").send("order-2", Paid("order-2"))
            paid = True
        alarm = jobs.next_alarm()
        wait = 0.05 if alarm is None else max(0.0, min(alarm.timestamp() - time.time(), 0.25))
        time.sleep(wait)  # an example's main loop; the daemon does this without polling
    status = refresher.status("user-123")
    state = refresher.get_state("user-123")
    print(
        f"token_refresher: run_count={status.run_count}, next run {status.next_run_at:%H:%M:%S}"
        f", refreshed {state.refreshed if state else 0} times in total"
    )
    print(
        f"order-1: {jobs.task('orders').status('order-1').status}, "
        f"order-2: {jobs.task('orders').status('order-2').status}"
    )
    jobs.close()


if __name__ == "__main__":
    main()
