"""Flow control's pure rules (durajobs.core.flow): rates, the token bucket, priority order."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durajobs import Continuous, Debounce, Task, every
from durajobs.core.flow import (
    PRIORITY_AGING,
    Rate,
    effective_priority,
    next_token,
    parse_rate,
    prioritized,
    take,
)


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [
        ("10/s", 10, 1.0),
        ("600/min", 600, 60.0),
        ("5000/h", 5000, 3600.0),
        ("100/day", 100, 86400.0),
        (" 3 / second ", 3, 1.0),
        ("7/minutes", 7, 60.0),
        ("2/hours", 2, 3600.0),
        ("1/M", 1, 60.0),
    ],
)
def test_rates_parse(text: str, count: int, per: float) -> None:
    assert parse_rate(text) == Rate(count, per)


@pytest.mark.parametrize("text", ["", "10", "0/s", "-1/s", "1.5/s", "10/fortnight", "10/", "/s"])
def test_bad_rates_name_the_field(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate: .* is not a rate"):
        parse_rate(text)


def test_rate_types() -> None:
    assert parse_rate(None) is None
    assert parse_rate(Rate(2, 0.5)) == Rate(2, 0.5)
    with pytest.raises(TypeError, match="rate must be a string"):
        parse_rate(10)
    with pytest.raises(ValueError, match="count >= 1"):
        parse_rate(Rate(0, 1.0))
    assert str(Rate(10, 1.0)) == "10/s"
    assert str(Rate(600, 60.0)) == "600/min"


# (tokens, at, now) -> (granted, tokens after, at after), for 10/s
BUCKET = [
    ((None, None, 100.0), (True, 9.0, 100.0)),  # a new bucket is full
    ((0.0, 100.0, 100.0), (False, 0.0, 100.0)),  # empty
    ((0.0, 100.0, 100.05), (False, 0.5, 100.05)),  # half a token refilled
    ((0.0, 100.0, 100.1), (True, 0.0, 100.1)),  # one whole token
    ((5.0, 100.0, 200.0), (True, 9.0, 200.0)),  # refill caps at the burst (10)
    ((3.0, 100.0, 99.0), (True, 2.0, 100.0)),  # a clock behind the stored one adds nothing
]


@pytest.mark.parametrize(("given_", "expected"), BUCKET)
def test_token_bucket(
    given_: tuple[float | None, float | None, float], expected: tuple[bool, float, float]
) -> None:
    granted, tokens, at = take(*given_, Rate(10, 1.0))
    assert (granted, at) == (expected[0], expected[2])
    assert tokens == pytest.approx(expected[1])


def test_next_token() -> None:
    assert next_token(0.0, 100.0, Rate(10, 1.0)) == pytest.approx(100.1)
    assert next_token(0.75, 100.0, Rate(1, 1.0)) == pytest.approx(100.25)
    assert next_token(2.0, 100.0, Rate(1, 1.0)) == 100.0


@given(
    count=st.integers(1, 50),
    per=st.sampled_from([0.5, 1.0, 60.0]),
    gaps=st.lists(st.floats(0, 2.0), min_size=1, max_size=200),
)
def test_no_window_holds_more_than_a_burst_and_its_refill(
    count: int, per: float, gaps: list[float]
) -> None:
    """Whatever the times of the requests, the grants in any window [a, a + w] are at most
    ``count + w * count / per`` (the bucket's promise), and a refused request is told a time
    at which it would be granted."""
    rate = Rate(count, per)
    tokens: float | None = None
    at: float | None = None
    now = 1000.0
    granted_at: list[float] = []
    for gap in gaps:
        now += gap
        ok, tokens, at = take(tokens, at, now, rate)
        if ok:
            granted_at.append(now)
        else:
            retry = next_token(tokens, at, rate)
            assert retry > now
            assert take(tokens, at, retry + 1e-9, rate)[0]
    for i, start in enumerate(granted_at):
        for j in range(i, len(granted_at)):
            window = granted_at[j] - start
            assert j - i + 1 <= count + window * rate.per_second + 1e-6


def test_priority_order_and_aging() -> None:
    now = 1000.0
    # (name, priority, due_at)
    items = [("low-old", 0, now - 5), ("high", 5, now - 1), ("low", 0, now), ("mid", 2, now)]
    order = prioritized(items, lambda i: i[1], lambda i: i[2], now)
    assert [i[0] for i in order] == ["high", "mid", "low-old", "low"]
    # Waiting raises the effective priority: after (5 - 0) * AGING seconds, a low step
    # outranks a fresh high one.
    starving = ("starving", 0, now - 5 * PRIORITY_AGING - 1)
    order = prioritized([("fresh-high", 5, now), starving], lambda i: i[1], lambda i: i[2], now)
    assert order[0] == starving
    assert effective_priority(3, None, now) == 3.0
    assert effective_priority(0, now + 10, now) == 0.0  # not due yet: no bonus


def test_no_priorities_keep_the_order_read() -> None:
    items = [("b", 0, 2.0), ("a", 0, 1.0)]
    assert prioritized(items, lambda i: i[1], lambda i: i[2], 0.0) == items


def _noop(_ctx: object) -> None:
    return None


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: Continuous(state=int, schedule=every("1m"), execute=_noop, **kw),
        lambda **kw: Debounce(event=int, execute=_noop, flush_after=1, **kw),
        lambda **kw: Task(state=int, event=int, on_event=_noop, execute=_noop, **kw),
    ],
    ids=["continuous", "debounce", "task"],
)
def test_every_definition_takes_the_flow_settings(make: object) -> None:
    job = make(concurrency=2, rate="20/s", priority=-3)  # type: ignore[operator]
    assert (job.concurrency, job.rate, job.priority) == (2, Rate(20, 1.0), -3)
    plain = make()  # type: ignore[operator]
    assert (plain.concurrency, plain.rate, plain.priority) == (None, None, 0)
    for bad, error in [
        ({"concurrency": 0}, ValueError),
        ({"concurrency": 1.5}, TypeError),
        ({"concurrency": True}, TypeError),
        ({"rate": "fast"}, ValueError),
        ({"priority": "high"}, TypeError),
    ]:
        with pytest.raises(error):
            make(**bad)  # type: ignore[operator]
    assert attrs.evolve(job, rate="5/min").rate == Rate(5, 60.0)
