"""The README's dashboard screenshots: a day of a small application, then headless Chromium.

Theory of operation: a ``Jobs`` with a ``FakeClock`` lives through the last 24 hours of a
small application in one-minute ticks (token refreshers every 10 minutes, webhook batches,
orders that ship half an hour after they are placed; a few handlers fail), calling ``run_due``
at every tick, so the history is what a daemon would have written. Then ``durajobs serve``
serves the file and Chromium (``/usr/bin/chromium``, never downloaded) takes the pictures.

Run: ``python benchmarks/web_screenshots.py [--out docs]``; writes ``dashboard-overview.png``
and ``dashboard-instance.png``.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from durajobs import Continuous, Debounce, FakeClock, Jobs, Retry, Task, every

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@attrs.define
class Tokens:
    access_token: str = ""
    refreshed: int = 0


@attrs.define
class Hook:
    repo: str
    action: str


@attrs.define
class Order:
    order_id: str
    amount_cents: int
    status: str = "placed"
    carrier: str | None = None


def registry() -> dict[str, Any]:
    def refresh(ctx: Any) -> None:
        if ctx.id in ("user-1043", "user-1086", "user-1129") and ctx.run_count % 3 == 2:
            raise TimeoutError("identity provider did not answer within 10s")
        ctx.state = Tokens(f"at_{ctx.run_count:06d}", ctx.state.refreshed + 1)

    def deliver(ctx: Any) -> None:
        if ctx.id == "acme/payments" and ctx.run_count % 4 == 3:
            raise ConnectionError("POST https://hooks.acme.example/ci: 502 Bad Gateway")

    def on_order(event: Order, ctx: Any) -> None:
        ctx.state = event
        ctx.schedule("30 minutes")

    def ship(ctx: Any) -> None:
        if ctx.state.amount_cents % 97 == 0:
            raise RuntimeError(f"warehouse API rejected order {ctx.id}: address incomplete")
        ctx.state = attrs.evolve(ctx.state, status="shipped", carrier="DHL")

    return {
        "token_refresher": Continuous(state=Tokens, schedule=every("10 minutes"), execute=refresh),
        "webhooks": Debounce(
            event=Hook, execute=deliver, flush_after="2 minutes",
            retry=Retry(max_attempts=3, delay="30 seconds"),
        ),
        "orders": Task(state=Order, event=Order, on_event=on_order, execute=ship),
    }  # fmt: skip


def live_a_day(db: Path) -> None:
    """24 hours of the application, one minute per tick, ending now."""
    rng = random.Random(11)
    end = time.time()
    clock = FakeClock(end - 86400)
    with Jobs(db, registry(), clock=clock, history_limit=2000) as jobs:
        for n in range(40):
            jobs.continuous("token_refresher").start(f"user-{1000 + n * 43}", Tokens())
        repos = ["acme/payments", "acme/web", "acme/api", "globex/infra", "initech/tps"]
        order_number = 5000
        while clock.time() < end:
            busy = 3 if (clock.time() % 86400) / 3600 % 24 > 7 else 1  # daytime traffic
            for _ in range(rng.randrange(0, 2 * busy + 1)):
                order_number += 1
                amount = rng.randrange(900, 25000)
                order_id = f"ord-{order_number}"
                jobs.task("orders").send(order_id, Order(order_id, amount))
            if rng.random() < 0.3 * busy:
                repo = rng.choice(repos)
                jobs.debounce("webhooks").add(repo, Hook(repo, rng.choice(["push", "pr", "tag"])))
            jobs.run_due()
            clock.advance(min(60.0, max(end - clock.time(), 0.001)))
        jobs.run_due()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "durajobs.db"
        t0 = time.perf_counter()
        live_a_day(db)
        print(f"a day of history in {time.perf_counter() - t0:.1f} s")
        proc = subprocess.Popen(
            [sys.executable, "-m", "durajobs.cli", "--db", str(db), "serve", "--port", "0"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            match = re.search(r"http://\S+/", proc.stdout.readline())
            assert match, "the server did not start"
            base = match.group(0)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(base)
                page.locator("figure.chart").first.wait_for()
                page.screenshot(path=str(args.out / "dashboard-overview.png"), full_page=True)
                page.goto(base + "failed")
                page.locator("td.id a").last.click()
                page.locator(".error-card summary").click()
                page.screenshot(path=str(args.out / "dashboard-instance.png"), full_page=True)
                browser.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    print(f"wrote {args.out / 'dashboard-overview.png'} and {args.out / 'dashboard-instance.png'}")


if __name__ == "__main__":
    main()
