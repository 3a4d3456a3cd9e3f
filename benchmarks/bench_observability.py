"""What tracing and the ``Tracker`` cost a step (issue 20).

Theory of operation: one client call (``send`` to an existing Task instance, durability
``normal``) is the step measured, in one process on a SQLite file, under five settings:

- ``tracing=False`` (the engine has no step watch: the floor);
- ``tracing=None`` with no provider set (the default: one ``isinstance`` per step until the
  application sets a provider);
- ``tracing=provider``: an SDK ``TracerProvider`` with a ``SimpleSpanProcessor`` to an
  in-memory exporter (a real span per step);
- a ``Tracker`` (default batching: a request per 100 records) whose collector answers at once;
- a ``Tracker`` whose collector accepts each request and never answers (a dead collector that
  still holds connections: the case a synchronous sender paid ``timeout`` for).

Every round runs each setting once, in an order that alternates from round to round, so a busy
machine slows them alike; the figures are the medians over ``--rounds`` rounds of the mean time
per step. The collectors run in threads of this process (they share its GIL, which makes the
tracker rows pessimistic).

Run: ``python benchmarks/bench_observability.py [--rounds 7] [--steps 2000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

from durajobs import Jobs, Task, Tracker


@attrs.define
class Count:
    n: int = 0


def on_event(event: int, ctx: Any) -> None:
    ctx.state = Count((ctx.state.n if ctx.state else 0) + event)


REGISTRY = {"t": Task(state=Count, event=int, on_event=on_event, execute=lambda ctx: None)}


def collector(answer: bool) -> str:
    """A collector in a thread: answers 200 at once, or holds every request."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not answer:
                time.sleep(3600)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/ingest"


def per_step(steps: int, **options: Any) -> float:
    """Mean seconds per ``send`` with these ``Jobs`` options."""
    with tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(os.path.join(directory, "b.db"), REGISTRY, durability="normal", **options)
        client = jobs.task("t")
        for n in range(100):
            client.send(f"i{n}", 1)  # the instances exist: every measured step updates one
        started = time.perf_counter()
        for n in range(steps):
            client.send(f"i{n % 100}", 1)
        took = time.perf_counter() - started
        jobs.tracker = None  # a held collector would make close() wait out its timeout
        jobs.close()
    return took / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    answering, holding = collector(answer=True), collector(answer=False)

    def tracker(url: str) -> Tracker:  # the default batching: 100 records, or 5 s
        return Tracker(url, "bench", "sk_bench", timeout=3600.0)

    settings: dict[str, Callable[[], dict[str, Any]]] = {
        "tracing=False": lambda: {"tracing": False},
        "tracing=None, no provider set": lambda: {"tracing": None},
        "tracing=SDK provider, in-memory export": lambda: {"tracing": provider},
        "Tracker, collector answers": lambda: {"tracing": False, "tracker": tracker(answering)},
        "Tracker, collector never answers": lambda: {"tracing": False, "tracker": tracker(holding)},
    }
    results: dict[str, list[float]] = {name: [] for name in settings}
    names = list(settings)
    for round_ in range(args.rounds + 1):  # round 0 warms up (imports, caches): not counted
        for name in names if round_ % 2 == 0 else reversed(names):
            took = per_step(args.steps, **settings[name]())
            if round_:
                results[name].append(took)
            exporter.clear()
    floor = statistics.median(results["tracing=False"])
    print(f"| setting | µs per step (median of {args.rounds}) | vs tracing=False |")
    print("|---|---|---|")
    for name in names:
        median = statistics.median(results[name])
        print(f"| {name} | {median * 1e6:.1f} | {median / floor:.2f}x |")


if __name__ == "__main__":
    main()
