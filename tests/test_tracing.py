"""OpenTelemetry spans per step (``durajobs.tracing``), caught by the SDK's in-memory exporter.

Every step is a ``durajobs.step`` span under the caller's current span, with the step's
attributes; a handler's own spans nest under it. Tests pass their own ``TracerProvider``
(``Jobs(tracing=provider)``), except the one that checks the global provider is picked up
when set after the ``Jobs`` was made (OpenTelemetry allows one global provider per process:
that test runs in a subprocess).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from durajobs import Continuous, ExecutionError, FakeClock, Jobs, Task, every
from durajobs.aio import AsyncJobs
from durajobs.errors import ValidationError

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@attrs.define
class Counter:
    n: int = 0


@attrs.frozen
class Ping:
    text: str


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def registry(provider: TracerProvider) -> dict[str, Any]:
    inner = provider.get_tracer("the-app")

    def beat(ctx: Any) -> None:
        with inner.start_as_current_span("app.beat"):
            ctx.state = Counter(ctx.state.n + 1)

    def on_event(event: Ping, ctx: Any) -> None:
        if event.text == "boom":
            raise RuntimeError("boom")
        ctx.state = Counter((ctx.state.n if ctx.state else 0) + 1)

    return {
        "beat": Continuous(state=Counter, schedule=every("1 minute"), execute=beat),
        "flow": Task(state=Counter, event=Ping, on_event=on_event, execute=lambda ctx: None),
    }


def step_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "durajobs.step"]


def test_a_span_per_step_under_the_callers_span(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    caller = provider.get_tracer("the-caller")
    clock = FakeClock(T0)
    with Jobs(tmp_path / "j.db", registry(provider), clock=clock, tracing=provider) as jobs:
        with caller.start_as_current_span("request") as request:
            jobs.task("flow").send("t1", Ping("a"))
            jobs.task("flow").send("t1", Ping("b"))
        clock.advance("1 minute")
        jobs.continuous("beat").start("c1", Counter())
        clock.advance("1 minute")
        with caller.start_as_current_span("tick") as tick:
            assert jobs.run_due() == 1

    spans = step_spans(exporter)
    assert [s.attributes["durajobs.instance_id"] for s in spans] == [
        "task:flow:t1", "task:flow:t1", "continuous:beat:c1", "continuous:beat:c1",
    ]  # fmt: skip
    first, second, start, due = spans
    assert first.parent is not None
    assert first.parent.span_id == request.get_span_context().span_id
    assert second.parent is not None
    assert second.parent.span_id == request.get_span_context().span_id
    assert start.parent is None  # no span was current: a root span
    assert due.parent is not None
    assert due.parent.span_id == tick.get_span_context().span_id
    assert dict(first.attributes or {}) == {
        "durajobs.job": "flow",
        "durajobs.kind": "task",
        "durajobs.instance_id": "task:flow:t1",
        "durajobs.step": 1,
        "durajobs.attempt": 1,
        "durajobs.outcome": "ok",
    }
    assert second.attributes is not None
    assert second.attributes["durajobs.step"] == 2
    assert due.attributes is not None
    assert (due.attributes["durajobs.kind"], due.attributes["durajobs.step"]) == ("continuous", 2)
    assert due.attributes["durajobs.outcome"] == "ok"
    # The handler's own span nests under its step's span.
    beat = [s for s in exporter.get_finished_spans() if s.name == "app.beat"][-1]
    assert beat.parent is not None
    assert beat.parent.span_id == due.context.span_id


def test_a_failed_step_is_an_error_span(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with (
        Jobs(tmp_path / "j.db", registry(provider), tracing=provider) as jobs,
        pytest.raises(ExecutionError),
    ):
        jobs.task("flow").send("t1", Ping("boom"))
    (span,) = step_spans(exporter)
    assert span.attributes is not None
    assert span.attributes["durajobs.outcome"] == "refused"
    assert span.status.status_code is StatusCode.ERROR
    assert "boom" in (span.status.description or "")


def test_tracing_false_makes_no_spans(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with Jobs(tmp_path / "j.db", registry(provider), tracing=False) as jobs:
        jobs.task("flow").send("t1", Ping("a"))
        assert jobs.engine.hooks.watch is None
    assert step_spans(exporter) == []


def test_tracing_refuses_what_is_not_a_provider(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="tracing must be"):
        Jobs(tmp_path / "j.db", {}, tracing="yes")
    assert not (tmp_path / "j.db").exists()


APP = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from durajobs import Jobs, Task

def on_event(event, ctx):
    ctx.state = (ctx.state or 0) + 1

jobs = Jobs(sys.argv[1], {"flow": Task(state=int, event=str, on_event=on_event,
                                       execute=lambda ctx: None)})
jobs.task("flow").send("before", "x")  # no provider yet: no span
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
jobs.task("flow").send("after", "x")
jobs.close()
print(",".join(s.attributes["durajobs.instance_id"] for s in exporter.get_finished_spans()))
"""


def test_by_default_spans_start_once_the_app_sets_its_global_provider(
    tmp_path: Path, new_database: Path | str
) -> None:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(APP))
    done = subprocess.run(
        [sys.executable, str(script), str(new_database)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "task:flow:after"


def test_an_async_callers_span_is_the_parent_too(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    caller = provider.get_tracer("the-caller")

    async def handle_request(ajobs: AsyncJobs) -> int:
        with caller.start_as_current_span("async request") as request:
            await ajobs.task("flow").send("t1", Ping("a"))
        return int(request.get_span_context().span_id)

    with Jobs(tmp_path / "j.db", registry(provider), tracing=provider) as jobs:
        request_id = asyncio.run(handle_request(AsyncJobs(jobs)))
    (span,) = step_spans(exporter)
    assert span.parent is not None
    assert span.parent.span_id == request_id  # across the executor's thread


@attrs.define
class Renamed:
    total: int = 0  # was ``n``: a stored {"n": ...} cannot be read as this


def test_a_step_that_cannot_read_its_instance_is_a_span_too(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The alarm step that parks an instance this code cannot read is a span (outcome
    ``parked``, an error status naming the key), and so is a client call refused for it."""
    clock = FakeClock(T0)
    with Jobs(tmp_path / "j.db", registry(provider), clock=clock, tracing=False) as jobs:
        jobs.continuous("beat").start("c1", Counter(1))

    def count(ctx: Any) -> None:
        ctx.state = Renamed(ctx.state.total + 1)  # reads the state: cannot, as stored

    renamed = {"beat": Continuous(state=Renamed, schedule=every("1 minute"), execute=count)}
    clock.advance("2 minutes")
    with Jobs(tmp_path / "j.db", renamed, clock=clock, tracing=provider) as jobs:
        assert jobs.run_due() == 1
        with pytest.raises(ValidationError):
            jobs.continuous("beat").trigger("c1")
    parked, refused = step_spans(exporter)
    assert parked.attributes is not None
    assert parked.attributes["durajobs.outcome"] == "parked"
    assert parked.status.status_code is StatusCode.ERROR
    assert "n" in (parked.status.description or "")
    assert refused.status.status_code is StatusCode.ERROR  # the exception recorded on it
