"""Values in, values out: every type ``Jobs()`` accepts round-trips through the store exactly,
and every other type is refused when ``Jobs()`` is made (DESIGN, behaviour 13).

The properties generate a random declared type from the supported set (nested attrs classes,
lists, tuples, dicts with str keys, optionals, tagged unions of attrs classes, enums, literals,
datetimes, dates, Any, and the scalars), then values of that type, and check that what is read
back equals what was stored: once through the codec's encode -> JSON text -> decode path (many
examples), once through a real ``Jobs`` on a SQLite file.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import itertools
import json
import math
import pathlib
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, Optional, Union
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durajobs import Continuous, Debounce, FakeClock, Jobs, Task, every
from durajobs.core.codec import Codec
from durajobs.errors import ExecutionError, ValidationError

pytestmark = pytest.mark.both_stores  # [sqlite] and [postgres]

# -- generated types and values -------------------------------------------------------------

_names = itertools.count()


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


Pair = tuple[Any, st.SearchStrategy[Any]]
"""A declared type and a strategy for its values."""

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
ZONES = [None, UTC, ZoneInfo("Europe/Berlin"), timezone(timedelta(hours=5, minutes=30))]

LEAVES: list[Pair] = [
    (str, st.text(max_size=10)),  # Hypothesis text has no lone surrogates: they are refused
    (int, st.integers()),
    (float, st.floats(allow_nan=False, allow_infinity=False)),
    (bool, st.booleans()),
    (Color, st.sampled_from(Color)),
    (Level, st.sampled_from(Level)),
    (Literal["a", "b", 3, True, None], st.sampled_from(["a", "b", 3, True, None])),
    (
        datetime,
        st.datetimes(
            min_value=datetime(2, 1, 1),
            max_value=datetime(9998, 12, 31),
            timezones=st.sampled_from(ZONES),
        ),
    ),
    (date, st.dates()),
    (Any, JSON_VALUES),
    (int | str, st.integers() | st.text(max_size=5)),
    (
        float | bool | None,
        st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False),
    ),
    (
        Union[str, int, float, bool],  # noqa: UP007 - the spelling is the point
        st.one_of(
            st.text(max_size=3),
            st.integers(),
            st.booleans(),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
    ),
]


def _attrs_class(fields: list[Pair]) -> Pair:
    name = f"Gen{next(_names)}"
    cls = attrs.make_class(
        name, {f"f{i}": attrs.field(type=tp) for i, (tp, _) in enumerate(fields)}
    )
    values = st.builds(cls, **{f"f{i}": strategy for i, (_, strategy) in enumerate(fields)})
    return cls, values


def _dataclass(fields: list[Pair]) -> Pair:
    """As ``_attrs_class``, a dataclass: the codec's rules are the same for both."""
    name = f"Gen{next(_names)}"
    cls = dataclasses.make_dataclass(name, [(f"f{i}", tp) for i, (tp, _) in enumerate(fields)])
    values = st.builds(cls, **{f"f{i}": strategy for i, (_, strategy) in enumerate(fields)})
    return cls, values


def _extend(inner: st.SearchStrategy[Pair]) -> st.SearchStrategy[Pair]:
    def as_list(p: Pair) -> Pair:
        return list[p[0]], st.lists(p[1], max_size=3)  # type: ignore[valid-type]

    def as_tuple(p: Pair) -> Pair:
        return tuple[p[0], ...], st.lists(p[1], max_size=3).map(tuple)  # type: ignore[valid-type]

    def as_dict(p: Pair) -> Pair:
        return dict[str, p[0]], st.dictionaries(st.text(max_size=5), p[1], max_size=3)  # type: ignore[valid-type]

    def as_optional(p: Pair) -> Pair:
        return Optional[p[0]], st.none() | p[1]  # noqa: UP045 - the spelling is the point

    def as_pair(ps: tuple[Pair, Pair]) -> Pair:
        return tuple[ps[0][0], ps[1][0]], st.tuples(ps[0][1], ps[1][1])  # type: ignore[valid-type]

    def as_union(ps: tuple[list[Pair], list[Pair], bool]) -> Pair:
        first, second = _attrs_class(ps[0]), _attrs_class(ps[1])
        tp: Any = Union[first[0], second[0]]  # noqa: UP007
        values = first[1] | second[1]
        if ps[2]:
            return Optional[tp], st.none() | values  # noqa: UP045
        return tp, values

    fields = st.lists(inner, min_size=0, max_size=4)
    return st.one_of(
        inner.map(as_list),
        inner.map(as_tuple),
        inner.map(as_dict),
        inner.map(as_optional),
        st.tuples(inner, inner).map(as_pair),
        fields.map(_attrs_class),
        fields.map(_dataclass),
        st.tuples(fields, fields, st.booleans()).map(as_union),
    )


TYPES: st.SearchStrategy[Pair] = st.recursive(st.sampled_from(LEAVES), _extend, max_leaves=6)


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[Any, Any]:
    """A declared type (always an attrs class or a dataclass at the top, as a state usually is)
    and a value."""
    tp, values = draw(TYPES)
    if not (isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp))):
        tp, values = _attrs_class([(tp, values)])
    return tp, draw(values)


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same classes all the way down (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b) and not (isinstance(a, float) and isinstance(b, float)):
        return isinstance(a, int | float) and isinstance(b, float) and float(a) == b
    if attrs.has(type(a)):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in attrs.fields(type(a)))
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, datetime) and a.tzinfo is not None and b.tzinfo is not None:
        # An aware datetime reads back as the same instant with a fixed offset (the codec's
        # contract). Python compares a wall time in a DST gap or fold unequal across zones
        # (PEP 495), so compare the instant and the offset themselves.
        return a.utcoffset() == b.utcoffset() and a.replace(tzinfo=None) == b.replace(tzinfo=None)
    return bool(a == b)


# -- the properties ---------------------------------------------------------------------------


@given(typed_values())
def test_codec_roundtrip_property_supported_types(typed: tuple[Any, Any]) -> None:
    """codec_roundtrip.py: encode -> JSON text -> decode gives back an equal value."""
    tp, value = typed
    codec = Codec().for_type(tp)
    text = codec.encode(value, "state")
    text.encode("utf-8")  # what the store writes: valid UTF-8, always
    json.loads(text)
    back = codec.decode(text, "state")
    assert back == value
    assert _same(value, back)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@settings(max_examples=25)
@given(typed=typed_values())
def test_codec_roundtrip_property_through_jobs(workdir: Path, typed: tuple[Any, Any]) -> None:
    """codec_roundtrip.py: a value stored by a real ``Jobs`` on SQLite reads back equal, as
    the state of a Continuous instance, and as a Task event turned into state by a handler."""
    tp, value = typed
    seen: list[Any] = []

    def keep_event(event: Any, ctx: Any) -> None:
        seen.append(event)
        ctx.state = event

    registry = {
        "c": Continuous(state=tp, schedule=every("1h"), execute=lambda ctx: None),
        "t": Task(state=tp, event=tp, on_event=keep_event, execute=lambda ctx: None),
    }
    path = workdir / f"j{next(_names)}.db"
    with Jobs(str(path), registry, clock=FakeClock(datetime(2026, 1, 5, tzinfo=UTC))) as jobs:
        jobs.continuous("c").start("u", value)
        jobs.task("t").send("u", value)
    with Jobs(str(path), registry) as jobs:  # a fresh process's view: decoded from the file
        assert _same(jobs.continuous("c").get_state("u"), value)
        assert _same(jobs.task("t").get_state("u"), value)
    assert _same(seen[0], value)


# -- refused at Jobs(): the job, the field and the type -------------------------------------


class Plain:
    pass


@pytest.mark.parametrize(
    ("field_type", "type_name"),
    [
        (dict[int, int], "dict[int, int]"),
        (set[str], "set[str]"),
        (frozenset[str], "frozenset[str]"),
        (bytes, "bytes"),
        (decimal.Decimal, "Decimal"),
        (pathlib.Path, "Path"),
        (Plain, "Plain"),
        (Union[int, list[int]], "int | list[int]"),  # noqa: UP007
        (Plain | None | int, "Plain | None | int"),
        (list[set[int]], "set[int]"),
    ],
)
def test_fieldprobe_unsupported_field_type_is_refused_at_jobs(
    tmp_path: Path, field_type: Any, type_name: str
) -> None:
    cls = attrs.make_class("Holder", {"payload": attrs.field(type=field_type)})
    job = Continuous(state=cls, schedule=every("1h"), execute=lambda ctx: None)
    with pytest.raises(TypeError) as excinfo:
        Jobs(str(tmp_path / "j.db"), {"probe": job})
    message = str(excinfo.value)
    assert "'probe'" in message
    assert "payload" in message
    assert type_name in message


@pytest.mark.parametrize("state_type", [set[int], dict[int, str], bytes, frozenset])
def test_fieldprobe_unsupported_state_type_is_refused_at_jobs(
    tmp_path: Path, state_type: Any
) -> None:
    job = Task(state=state_type, event=str, on_event=lambda e, ctx: None, execute=lambda ctx: None)
    with pytest.raises(TypeError, match=r"job 'probe'.*cannot store"):
        Jobs(str(tmp_path / "j.db"), {"probe": job})


def test_an_unsupported_state_type_fails_when_jobs_is_made(tmp_path: Path) -> None:
    job = Continuous(state=Plain, schedule=every("1h"), execute=lambda ctx: None)
    with pytest.raises(TypeError, match=r"job 'c'.*cannot store Plain"):
        Jobs(tmp_path / "j.db", {"c": job})


@attrs.define
class Unresolvable:
    x: Missing  # type: ignore[name-defined]  # noqa: F821 - the point of the test
    n: int = 0


def test_unresolvable_annotation_is_a_type_error_naming_job_and_field(tmp_path: Path) -> None:
    job = Continuous(state=Unresolvable, schedule=every("1h"), execute=lambda ctx: None)
    with pytest.raises(TypeError) as excinfo:
        Jobs(str(tmp_path / "j.db"), {"probe": job})
    message = str(excinfo.value)
    assert "'probe'" in message
    assert "'x'" in message
    assert "Missing" in message
    assert not isinstance(excinfo.value, NameError)


# -- values that do not fit: the field, the type and the problem ----------------------------


class Plan(enum.Enum):
    FREE = "free"
    PRO = "pro"


@attrs.define
class Inner:
    x: int
    tags: list[str] = attrs.Factory(list)


@attrs.define
class Account:
    plan: Plan = Plan.FREE
    score: float = 0.0
    inner: Inner | None = None
    name: str = ""
    extra: Any = None


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Jobs]:
    def nothing(ctx: Any) -> None:
        return None

    registry = {
        "acct": Continuous(state=Account, schedule=every("1h"), execute=nothing),
        "d": Debounce(event=Account, flush_after="1h", execute=nothing),
        "t": Task(state=Account, event=Account, on_event=lambda e, ctx: None, execute=nothing),
    }
    with Jobs(str(tmp_path / "j.db"), registry) as jobs:
        yield jobs


def test_codec_roundtrip_enum_field_given_a_str_is_a_validation_error(accounts: Jobs) -> None:
    with pytest.raises(ValidationError) as excinfo:
        accounts.continuous("acct").start("u", Account(plan="pro"))  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert "'plan'" in message
    assert "Plan" in message
    assert "'pro'" in message
    assert accounts.continuous("acct").status("u").status == "not_found"


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        (Account(score=float("nan")), ["'score'", "nan", "NaN"]),
        (Account(score=float("inf")), ["'score'", "inf"]),
        (Account(extra={"a": [1, float("-inf")]}), ["extra['a'][1]", "-inf"]),
        (Account(inner=Inner("x")), ["'inner.x'", "int", "'x'"]),  # type: ignore[arg-type]
        (Account(inner=Inner(1, ["a", 2])), ["inner.tags[1]", "str"]),  # type: ignore[list-item]
        (Account(extra={1: "int key"}), ["'extra'", "dict key 1", "str"]),
        (Account(extra=("a", "tuple")), ["'extra'", "tuple"]),
        (Account(extra={1, 2}), ["'extra'", "set"]),
    ],
)
def test_values2_message_names_field_type_and_problem(
    accounts: Jobs, value: Account, fragments: list[str]
) -> None:
    with pytest.raises(ValidationError) as excinfo:
        accounts.continuous("acct").start("u", value)
    message = str(excinfo.value)
    assert "Account" in message
    for fragment in fragments:
        assert fragment in message


@attrs.define
class A:
    a: int


@attrs.define
class B:
    b: int


@attrs.define
class B2:
    b: int


def test_evolve_renamed_union_member_names_the_tag_and_the_type(tmp_path: Path) -> None:
    def nothing(ctx: Any) -> None:
        return None

    path = str(tmp_path / "j.db")
    with Jobs(path, {"d": Debounce(event=A | B, flush_after="1h", execute=nothing)}) as jobs:
        jobs.debounce("d").add("u", B(1))
    renamed = Debounce(event=A | B2, flush_after="1h", execute=nothing)
    with Jobs(path, {"d": renamed}) as jobs, pytest.raises(ValidationError) as excinfo:
        jobs.debounce("d").get_state("u")
    message = str(excinfo.value)
    assert "A | B2" in message
    assert "_type" in message
    assert "'B'" in message
    assert "renamed" in message


# -- surrogate.py (the codec part) ----------------------------------------------------------

BAD_NAME = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # as os.listdir gives it


def test_surrogate_in_client_calls_is_a_validation_error_naming_the_field(accounts: Jobs) -> None:
    calls = [
        lambda: accounts.continuous("acct").start("u", Account(name=BAD_NAME)),
        lambda: accounts.debounce("d").add("u", Account(inner=Inner(1, [BAD_NAME]))),
        lambda: accounts.task("t").send("u", Account(extra={BAD_NAME: 1})),
        lambda: accounts.task("t").send("v", Account(extra={"k": [BAD_NAME]})),
    ]
    for call, field in zip(
        calls, ["'name'", "inner.tags[0]", "extra", "extra['k'][0]"], strict=True
    ):
        with pytest.raises(ValidationError) as excinfo:
            call()
        assert field in str(excinfo.value)
        assert "surrogate" in str(excinfo.value)
    assert accounts.continuous("acct").status("u").status == "not_found"
    assert accounts.debounce("d").status("u").status == "not_found"
    assert accounts.task("t").status("u").status == "not_found"


def test_surrogate_in_a_handler_state_fails_that_step_only(tmp_path: Path) -> None:
    def execute(ctx: Any) -> None:
        ctx.state = Account(name=BAD_NAME if ctx.id == "poison" else "ok")

    clock = FakeClock(datetime(2026, 1, 5, tzinfo=UTC))
    job = Continuous(state=Account, schedule=every("1h"), execute=execute, start_immediately=False)
    with Jobs(str(tmp_path / "j.db"), {"c": job}, clock=clock) as jobs:
        client = jobs.continuous("c")
        for user_id in ("a", "poison", "z"):
            client.start(user_id, Account())
        clock.advance("1h")
        assert jobs.run_due() == 3
        assert client.get_state("a") == Account(name="ok")
        assert client.get_state("z") == Account(name="ok")
        assert client.get_state("poison") == Account()
        last_error = client.status("poison").last_error or ""
        assert "surrogate" in last_error
        assert "'name'" in last_error


def test_surrogate_in_a_send_handler_state_is_reported(tmp_path: Path) -> None:
    def on_event(event: Any, ctx: Any) -> None:
        ctx.state = Account(name=BAD_NAME)

    task = Task(state=Account, event=Account, on_event=on_event, execute=lambda ctx: None)
    with Jobs(str(tmp_path / "j.db"), {"t": task}) as jobs:
        with pytest.raises((ValidationError, ExecutionError)) as excinfo:
            jobs.task("t").send("u", Account())
        assert "surrogate" in str(excinfo.value)
        assert jobs.task("t").status("u").status == "not_found"


@attrs.define
class Holder:
    payload: A | B


def test_evolve_nested_union_rows_written_without_a_tag_still_read() -> None:
    codec = Codec().for_type(Holder)
    assert json.loads(codec.encode(Holder(B(1)), "state")) == {"payload": {"b": 1, "_type": "B"}}
    assert codec.decode('{"payload": {"b": 2}}', "state") == Holder(B(2))
    with pytest.raises(ValidationError, match=r"'payload'.*no _type tag"):
        codec.decode('{"payload": {"c": 2}}', "state")
