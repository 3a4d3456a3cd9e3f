"""The jobs of a small shop, shared by the web recipes (one module-level ``Jobs``).

A ``Jobs`` made at import time is shared by every thread of the server and survives the
server's fork (gunicorn ``--preload``): each thread and each worker process opens its own
connection on first use.
"""

import os

import attrs

from durajobs import Jobs, Task


@attrs.define
class Order:
    items: list[str] = attrs.Factory(list)
    paid: bool = False
    reminded: bool = False


@attrs.define
class ItemAdded:
    sku: str


@attrs.define
class Paid:
    amount: float


def on_event(event: ItemAdded | Paid, ctx) -> None:
    order = ctx.state or Order()
    if isinstance(event, ItemAdded):
        ctx.state = attrs.evolve(order, items=[*order.items, event.sku])
        ctx.schedule("5 minutes")  # no payment within 5 minutes: remind
    else:
        ctx.state = attrs.evolve(order, paid=True)
        ctx.cancel_schedule()


def remind(ctx) -> None:
    ctx.state = attrs.evolve(ctx.state, reminded=True)  # send the e-mail here


jobs = Jobs(
    os.environ.get("SHOP_DB", "shop.db"),
    {"orders": Task(state=Order, event=ItemAdded | Paid, on_event=on_event, execute=remind)},
)
