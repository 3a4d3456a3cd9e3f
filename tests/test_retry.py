"""Retry policies: Backoff delays, jitter, and the attempt count."""

from __future__ import annotations

import ast
import math
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durajobs.core import retry
from durajobs.core.retry import MAX_DELAY, Backoff, Retry
from durajobs.errors import SchedulerError, ValidationError

# --- Backoff --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        (Backoff.exponential(1), [1, 2, 4, 8, 16, 32]),
        (Backoff.exponential("1 second", max="30 seconds"), [1, 2, 4, 8, 16, 30, 30]),
        (Backoff.exponential("100ms", factor=3), [0.1, 0.3, 0.9, 2.7]),
        (Backoff.exponential(timedelta(seconds=2), factor=1.5, max=5), [2, 3, 4.5, 5, 5]),
        (Backoff.exponential(5, factor=1), [5, 5, 5]),
        (Backoff.exponential(0), [0, 0, 0]),
        (Backoff.exponential(10, max=3), [3, 3, 3]),  # a cap below base caps everything
        (Backoff.linear("2s"), [2, 4, 6, 8]),  # increment defaults to base
        (Backoff.linear(1, increment="500ms"), [1, 1.5, 2, 2.5]),
        (Backoff.linear(1, increment=2, max=4), [1, 3, 4, 4]),
        (Backoff.linear(3, increment=0), [3, 3, 3]),
        (Backoff.fixed("5s"), [5, 5, 5]),
        (Backoff.fixed(0), [0, 0]),
        (Backoff.fixed(timedelta(minutes=1)), [60, 60]),
    ],
)
def test_backoff_delays(backoff: Backoff, delays: list[float]) -> None:
    got = [backoff.delay(failures) for failures in range(1, len(delays) + 1)]
    assert got == pytest.approx(delays)


@pytest.mark.parametrize(
    "backoff",
    [
        Backoff.exponential(1),
        Backoff.exponential(1, factor=1000),
        Backoff.exponential(1, max=60),
        Backoff.linear(1),
        Backoff.linear(1, max=60),
        Backoff.fixed(1),
    ],
)
@pytest.mark.parametrize("failures", [100, 1075, 10**6, 10**18, 10**400])
def test_backoff_never_overflows(backoff: Backoff, failures: int) -> None:
    delay = backoff.delay(failures)
    assert math.isfinite(delay)
    assert 0 <= delay <= MAX_DELAY
    if backoff.max is not None:
        assert delay <= backoff.max


def test_uncapped_backoff_stops_at_max_delay() -> None:
    assert Backoff.exponential(1).delay(10**6) == MAX_DELAY
    assert Backoff.linear(1).delay(10**12) == MAX_DELAY
    assert Backoff.fixed(MAX_DELAY * 2).delay(1) == MAX_DELAY
    assert Backoff.exponential(1, max=MAX_DELAY * 2).delay(10**6) == MAX_DELAY


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Backoff.exponential(-1), "backoff base"),
        (lambda: Backoff.exponential("soon"), "backoff base"),
        (lambda: Backoff.exponential(1, max="-1s"), "backoff max"),
        (lambda: Backoff.exponential(1, factor=0.5), "factor"),
        (lambda: Backoff.exponential(1, factor=float("inf")), "factor"),
        (lambda: Backoff.exponential(1, factor=float("nan")), "factor"),
        (lambda: Backoff.linear(1, increment="-1s"), "backoff increment"),
        (lambda: Backoff.linear(float("nan")), "backoff base"),
        (lambda: Backoff.fixed("x"), "backoff delay"),
        (lambda: Backoff.fixed(float("inf")), "backoff delay"),
        (lambda: Backoff(kind="spiral", base=1.0), "kind"),  # type: ignore[arg-type]
        (lambda: Backoff(kind="fixed", base=-1.0), "base"),
        (lambda: Backoff(kind="fixed", base=1.0, max=float("nan")), "max"),
        (lambda: Backoff.exponential(1e-300), "base must be 0 or at least 1us"),
        (lambda: Backoff.linear(1, increment=5e-324), "increment must be 0 or at least 1us"),
    ],
)
def test_backoff_validation(make: object, match: str) -> None:
    assert callable(make)
    with pytest.raises(SchedulerError, match=match):
        make()


def test_backoff_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        Backoff.fixed(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Backoff.exponential(True)


def test_backoff_delay_needs_a_failure() -> None:
    with pytest.raises(ValueError, match="failures"):
        Backoff.fixed(1).delay(0)


def test_backoff_is_a_frozen_value() -> None:
    assert Backoff.exponential("1s", max="30s") == Backoff.exponential(1, max=30.0)
    assert Backoff.linear(2) == Backoff.linear("2s", increment="2s")
    assert len({Backoff.fixed(1), Backoff.fixed("1s")}) == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Backoff.fixed(1).base = 2.0  # type: ignore[misc]


durations = st.just(0.0) | st.floats(min_value=1e-6, max_value=1e6)
backoffs = st.one_of(
    st.builds(
        Backoff.exponential,
        base=durations,
        factor=st.floats(min_value=1, max_value=100),
        max=st.none() | durations,
    ),
    st.builds(
        Backoff.linear, base=durations, increment=st.none() | durations, max=st.none() | durations
    ),
    st.builds(Backoff.fixed, durations),
)
failure_counts = st.integers(min_value=1, max_value=10**6) | st.integers(min_value=1)


@given(backoffs, failure_counts, failure_counts)
def test_backoff_is_monotone_and_bounded(backoff: Backoff, first: int, second: int) -> None:
    low, high = sorted((first, second))
    assert 0 <= backoff.delay(low) <= backoff.delay(high) <= MAX_DELAY
    if backoff.max is not None:
        assert backoff.delay(high) <= backoff.max


@given(backoffs, st.integers(min_value=1, max_value=60))
def test_backoff_follows_its_formula_below_the_cap(backoff: Backoff, failures: int) -> None:
    if backoff.kind == "exponential":
        raw = backoff.base * backoff.factor ** (failures - 1)
    elif backoff.kind == "linear":
        raw = backoff.base + backoff.increment * (failures - 1)
    else:
        raw = backoff.base
    cap = MAX_DELAY if backoff.max is None else min(backoff.max, MAX_DELAY)
    assert backoff.delay(failures) == pytest.approx(min(raw, cap), rel=1e-9)


# --- Retry ----------------------------------------------------------------------------------


def test_retry_defaults() -> None:
    policy = Retry()
    assert policy.max_attempts == 3
    assert policy.delay == Backoff.fixed(1.0)
    assert policy.jitter is False


@pytest.mark.parametrize(
    ("delay", "backoff"),
    [
        ("5s", Backoff.fixed(5)),
        (5, Backoff.fixed(5)),
        (timedelta(seconds=5), Backoff.fixed(5)),
        (Backoff.linear(1), Backoff.linear(1)),
    ],
)
def test_retry_converts_a_duration_to_a_fixed_backoff(
    delay: Backoff | str | float | timedelta, backoff: Backoff
) -> None:
    assert Retry(delay=delay).delay == backoff


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_retry_needs_one_attempt(max_attempts: int) -> None:
    with pytest.raises(ValidationError, match="max_attempts"):
        Retry(max_attempts=max_attempts)
    with pytest.raises(ValueError):
        Retry(max_attempts=max_attempts)


@pytest.mark.parametrize("max_attempts", [True, 2.0, "3", None])
def test_retry_max_attempts_must_be_an_int(max_attempts: object) -> None:
    with pytest.raises(TypeError, match="max_attempts"):
        Retry(max_attempts=max_attempts)  # type: ignore[arg-type]


def test_retry_validates_delay_and_jitter() -> None:
    with pytest.raises(SchedulerError, match="delay"):
        Retry(delay="-1s")
    with pytest.raises(SchedulerError):
        Retry(delay="whenever")
    with pytest.raises(TypeError, match="jitter"):
        Retry(jitter=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("max_attempts", "attempt", "expected"),
    [(1, 1, False), (3, 1, True), (3, 2, True), (3, 3, False), (3, 4, False)],
)
def test_can_retry(max_attempts: int, attempt: int, expected: bool) -> None:
    assert Retry(max_attempts=max_attempts).can_retry(attempt) is expected


@given(st.integers(min_value=1, max_value=100))
def test_max_attempts_counts_every_execution(max_attempts: int) -> None:
    policy = Retry(max_attempts=max_attempts)
    executions = 1  # the first try
    while policy.can_retry(executions):  # it failed; is there another attempt?
        executions += 1
    assert executions == max_attempts


def test_next_delay_without_jitter_is_the_backoff() -> None:
    policy = Retry(delay=Backoff.exponential("1 second", max="30 seconds"))
    assert [policy.next_delay(n, 0.5) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    ("rand", "expected"), [(0.0, 9.0), (0.25, 9.5), (0.5, 10.0), (0.75, 10.5), (0.999999, 11.0)]
)
def test_next_delay_with_jitter(rand: float, expected: float) -> None:
    policy = Retry(delay=Backoff.fixed(10), jitter=True)
    assert policy.next_delay(1, rand) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("rand", [-0.1, 1.0, 2.0, float("nan")])
def test_next_delay_rejects_rand_outside_the_unit_interval(rand: float) -> None:
    with pytest.raises(ValueError, match="rand"):
        Retry(jitter=True).next_delay(1, rand)


@given(
    backoffs,
    st.integers(min_value=1, max_value=10**6),
    st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_jitter_stays_within_ten_percent(backoff: Backoff, failures: int, rand: float) -> None:
    delay = backoff.delay(failures)
    jittered = Retry(delay=backoff, jitter=True).next_delay(failures, rand)
    assert jittered >= 0
    assert delay * 0.9 * (1 - 1e-12) <= jittered <= delay * 1.1 * (1 + 1e-12)
    assert Retry(delay=backoff).next_delay(failures, rand) == delay


# --- purity -------------------------------------------------------------------------------

FORBIDDEN_IMPORTS = {"apsw", "os", "time", "socket", "signal", "random", "threading"}


def test_retry_module_is_pure() -> None:
    assert retry.__file__ is not None
    source = Path(retry.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN_IMPORTS
    assert ".now(" not in source
