"""Typed state and events to JSON text and back, with one cattrs converter.

Theory of operation
-------------------
Values in, values out: every type a ``Codec`` accepts reads back equal to what was stored, and
every other type is refused when the codec is built (``Jobs()``), with a ``TypeError`` naming
the field and the type. The supported types are:

* ``str``, ``int``, ``float``, ``bool``, ``None``;
* attrs classes and dataclasses whose fields are supported types (their annotations must
  resolve);
* ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``dict[str, T]`` (bare ``list``, ``tuple``
  and ``dict`` mean ``[Any]`` / ``[str, Any]``);
* ``Optional[T]`` / ``T | None``; unions of attrs classes or dataclasses (stored with a
  ``"_type"`` tag holding the class name, optionally with ``None``); unions of ``str``,
  ``int``, ``float`` and ``bool`` (JSON keeps them apart);
* ``enum.Enum`` classes whose values are ``str`` or ``int``; ``Literal[...]`` of ``str``, ``int``,
  ``bool`` or ``None``;
* ``datetime.datetime`` and ``datetime.date`` (stored as ISO 8601 text; an aware datetime reads
  back as the same instant with a fixed UTC offset, which compares equal);
* ``Any`` / ``object``: a plain JSON value (``dict`` with ``str`` keys, ``list``, ``str``, ``int``,
  finite ``float``, ``bool``, ``None``).

Not supported: ``set``, ``frozenset``, ``bytes``, ``dict`` with non-``str`` keys (JSON would make
the keys strings), other classes, other unions (``int | list[int]``, ``Inner | int``).

Encoding is checked: a value is unstructured, written as JSON, structured back and compared with
the original, so that what a step writes is what the next step reads. Decoding is strict about
primitive types (a ``str`` field does not silently accept ``123``). When a value does not fit,
a walk over the value and its declared type finds the first field at fault, and the
:class:`~durajobs.errors.ValidationError` names the field path, the type and the problem (a
wrong type, NaN or infinity, a lone surrogate in a string, a tag naming no union member).
Strings with lone surrogates (``os.listdir`` gives them for undecodable file names) are refused:
they are not valid Unicode, and neither SQLite's UTF-8 text nor PostgreSQL could store them.

Decoding never drops data: a stored object with a key its class does not have (a field
renamed or removed) is refused with a ``ValidationError`` naming the key, never read without
it. Adding a field with a default keeps old rows loadable, and so does widening a type
(``int`` to ``float``, ``T`` to ``T | None``). Anything else is a new version of the job's
definition with a ``migrate`` step: ``upgrade`` runs the chain on the stored JSON objects.

Pure: imports no I/O modules.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, Final

import attrs
import cattrs

from durajobs.errors import ValidationError

__all__ = ["Codec", "TypeCodec", "upgrade"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_loads = json.loads
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_NONE_TYPE: Final = type(None)
_TAG: Final = "_type"
_SCALARS: Final = (str, int, float, bool)
_SUPPORTED: Final = (
    "supported: str, int, float, bool, None, attrs classes, dataclasses, list[T], tuple[...], "
    "dict[str, T], Optional[T], unions of attrs classes/dataclasses or of str/int/float/bool, "
    "Enum, Literal, datetime, date, Any"
)


def _strict(kind: type, accept: tuple[type, ...]) -> Callable[[Any, Any], Any]:
    name = kind.__name__

    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got bool {value!r}")
        if not isinstance(value, accept):
            raise TypeError(f"expected {name}, got {type(value).__name__} {_show(value)}")
        return float(value) if kind is float else value  # type: ignore[arg-type]

    return structure


def _show(value: Any) -> str:
    """A short repr of a value for messages (a 20 MB string must not flood a message)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _union_members(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _describe(tp: Any) -> str:
    members = _union_members(tp)
    if members is not None:
        return " | ".join(_describe(m) for m in members)
    if tp is _NONE_TYPE:
        return "None"
    if typing.get_origin(tp) is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


def _where(path: str) -> str:
    return f"field {path!r}" if path else "value"


# -- the supported types ----------------------------------------------------------------------


def _resolved_fields(cls: type) -> tuple[attrs.Attribute[Any], ...]:
    """The fields of an attrs class with their annotations resolved.

    Raises:
        TypeError: an annotation names something that does not exist (``x: "Missing"``).
    """
    try:
        attrs.resolve_types(cls)
    except NameError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        culprits = [
            f.name
            for f in attrs.fields(cls)
            if isinstance(f.type, str) and (not missing or missing in f.type)
        ]
        where = f"field {culprits[0]!r} of " if culprits else "a field of "
        raise TypeError(
            f"{where}{cls.__qualname__}: its annotation cannot be resolved ({exc}); "
            "define the type at module level, before the class is used"
        ) from None
    except Exception as exc:  # any other failure to evaluate an annotation string
        raise TypeError(
            f"the annotations of {cls.__qualname__} cannot be resolved: {exc!r}"
        ) from None
    fields: tuple[attrs.Attribute[Any], ...] = attrs.fields(cls)
    return fields


def _is_record(tp: Any) -> bool:
    """An attrs class or a dataclass: stored as a JSON object of its fields."""
    return isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp))


def _record_fields(cls: type) -> list[tuple[str, Any]]:
    """``(name, resolved type)`` of each field of an attrs class or a dataclass.

    Raises:
        TypeError: an annotation names something that does not exist.
    """
    if attrs.has(cls):
        return [(f.name, f.type) for f in _resolved_fields(cls)]
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # NameError or any failure to evaluate an annotation string
        raise TypeError(
            f"the annotations of {cls.__qualname__} cannot be resolved ({exc}); define the "
            "type at module level, before the class is used"
        ) from None
    return [(f.name, hints.get(f.name, f.type)) for f in dataclasses.fields(cls)]


def _refuse(tp: Any, path: str, why: str = "") -> TypeError:
    at = f" (field {path!r})" if path else ""
    return TypeError(f"durajobs cannot store {_describe(tp)}{at}{why}; {_SUPPORTED}")


class _Types:
    """Checks declared types against the supported set and teaches the converter the rest."""

    def __init__(self, conv: cattrs.Converter) -> None:
        self._conv = conv
        self._checked: set[Any] = set()

    def check(self, tp: Any, path: str) -> None:
        """Refuse an unsupported type (``TypeError`` naming ``path`` and the type)."""
        if tp in (Any, object, _NONE_TYPE, None, str, int, float, bool, datetime, date):
            return
        try:
            if tp in self._checked:
                return
            self._checked.add(tp)  # before recursing: attrs classes may refer to themselves
        except TypeError:  # an unhashable annotation
            raise _refuse(tp, path) from None
        try:
            self._check_new(tp, path)
        except TypeError:
            self._checked.discard(tp)
            raise

    def _check_new(self, tp: Any, path: str) -> None:
        if isinstance(tp, str | typing.ForwardRef):
            raise _refuse(tp, path, ": an annotation that cannot be resolved")
        if _is_record(tp):
            for name, field_type in _record_fields(tp):
                self.check(field_type, f"{path}.{name}" if path else name)
            return
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            bad = [m for m in tp if isinstance(m.value, bool) or not isinstance(m.value, str | int)]
            if bad:
                raise _refuse(tp, path, f": the value of {bad[0]!r} is not a str or an int")
            # Per class: an IntEnum or StrEnum would otherwise take the int or str hook and
            # read back as a plain int or str (equal, but not the member).
            self._conv.register_unstructure_hook(tp, _enum_unstructure)
            self._conv.register_structure_hook(tp, _enum_structure)
            return
        if tp in (list, tuple, dict):
            return
        members = _union_members(tp)
        if members is not None:
            self._check_union(tp, members, path)
            return
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Literal:
            for arg in args:
                if not (arg is None or isinstance(arg, str | int)):
                    raise _refuse(tp, path, f": the literal {arg!r} is not a str, int or bool")
            return
        if origin is list and len(args) == 1:
            self.check(args[0], f"{path}[]")
            return
        if origin is tuple:
            for index, arg in enumerate(args):
                if arg is not Ellipsis:
                    self.check(arg, f"{path}[{index}]")
            return
        if origin is dict and len(args) == 2:
            if args[0] is not str:
                raise _refuse(tp, path, ": dict keys must be str (JSON keys are strings)")
            self.check(args[1], f"{path}[]")
            return
        raise _refuse(tp, path)

    def _check_union(self, tp: Any, members: tuple[Any, ...], path: str) -> None:
        concrete = [m for m in members if m is not _NONE_TYPE]
        if len(concrete) == 1:
            self.check(concrete[0], path)
            return
        if all(m in _SCALARS for m in concrete):
            self._register_scalar_union(tp, concrete, _NONE_TYPE in members)
            return
        if not all(_is_record(m) for m in concrete):
            raise _refuse(
                tp,
                path,
                ": a union must be one type and None, JSON scalars (str | int | float | bool), "
                "or attrs classes/dataclasses (tagged)",
            )
        names = [m.__name__ for m in concrete]
        if len(set(names)) != len(names):
            raise _refuse(tp, path, ": two members share a class name, which is the tag")
        for member in concrete:
            self.check(member, path)
        self._register_tagged_union(tp, concrete, _NONE_TYPE in members)

    def _register_scalar_union(self, tp: Any, kinds: list[Any], optional: bool) -> None:
        """``int | str`` and the like: JSON keeps the kind apart, so no tag is needed."""
        names = " | ".join(k.__name__ for k in kinds)

        def structure(raw: Any, _type: Any) -> Any:
            if raw is None and optional:
                return None
            kind = type(raw)  # what JSON gives: bool, int, float or str
            if kind in kinds:
                return raw
            if kind is int and float in kinds:
                return float(raw)
            raise TypeError(f"expected {names}, got {kind.__name__} {_show(raw)}")

        self._conv.register_unstructure_hook(tp, _identity)
        self._conv.register_structure_hook(tp, structure)

    def _register_tagged_union(self, tp: Any, classes: list[type], optional: bool) -> None:
        conv = self._conv
        by_name = {cls.__name__: cls for cls in classes}
        names = " | ".join(by_name)

        def unstructure(value: Any) -> Any:
            if value is None and optional:
                return None
            cls = type(value)
            if by_name.get(cls.__name__) is not cls:
                raise TypeError(f"expected {names}, got {cls.__name__}")
            raw = conv.unstructure(value, cls)
            raw[_TAG] = cls.__name__
            return raw

        def structure(raw: Any, _type: Any) -> Any:
            if raw is None and optional:
                return None
            if not isinstance(raw, dict):
                raise TypeError(f"expected an object of {names}, got {type(raw).__name__}")
            tag = raw.get(_TAG)
            cls = by_name.get(tag) if isinstance(tag, str) else None
            if tag is None:  # written untagged (a nested union before tags): by its fields
                fits = [c for c in classes if _required(c) <= raw.keys()]
                cls = fits[0] if len(fits) == 1 else None
            if cls is None and tag is None:
                raise ValueError(f"no {_TAG} tag, and the fields fit no single one of {names}")
            if cls is None:
                raise ValueError(
                    f"the stored {_TAG} {tag!r} names no member of {names} "
                    "(was a class renamed or removed?)"
                )
            # The tag is the union's, not a field: the class refuses keys it does not have.
            return conv.structure({k: v for k, v in raw.items() if k != _TAG}, cls)

        conv.register_unstructure_hook(tp, unstructure)
        conv.register_structure_hook(tp, structure)


def _identity(value: Any) -> Any:
    return value


def _required(cls: type) -> set[str]:
    """The names of an attrs class's (or a dataclass's) fields without a default."""
    if attrs.has(cls):
        return {f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING}
    missing = dataclasses.MISSING
    return {
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is missing and f.default_factory is missing
    }


# -- finding the field at fault -----------------------------------------------------------------


def _problem(value: Any, tp: Any, path: str) -> str | None:
    """The first thing about ``value`` that ``tp`` cannot store, naming its field path."""
    where = _where(path)
    if tp is Any or tp is object or tp in (list, tuple, dict):
        return _json_problem(value, path, tp)
    if tp is _NONE_TYPE or tp is None:
        return None if value is None else f"{where}: expected None, got {_show(value)}"
    members = _union_members(tp)
    if members is not None:
        if value is None:
            return None if _NONE_TYPE in members else f"{where}: expected {_describe(tp)}, got None"
        concrete = [m for m in members if m is not _NONE_TYPE]
        if len(concrete) == 1:
            return _problem(value, concrete[0], path)
        if all(m in _SCALARS for m in concrete):  # the member the value is, by its own type
            kind = type(value)
            if kind not in concrete and not (kind is int and float in concrete):
                return f"{where}: expected {_describe(tp)}, got {kind.__name__} {_show(value)}"
            return _problem(value, kind if kind in concrete else float, path)
        if type(value) not in concrete:
            return f"{where}: expected {_describe(tp)}, got {type(value).__name__}"
        return _problem(value, type(value), path)
    if tp is bool:
        if type(value) is not bool:
            return f"{where}: expected bool, got {type(value).__name__} {_show(value)}"
        return None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{where}: expected int, got {type(value).__name__} {_show(value)}"
        return None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{where}: expected float, got {type(value).__name__} {_show(value)}"
        return _float_problem(value, path)
    if tp is str:
        if not isinstance(value, str):
            return f"{where}: expected str, got {type(value).__name__} {_show(value)}"
        return _text_problem(value, path)
    if tp is datetime or tp is date:
        if not isinstance(value, tp) or (tp is date and isinstance(value, datetime)):
            return f"{where}: expected {tp.__name__}, got {type(value).__name__} {_show(value)}"
        return None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if not isinstance(value, tp):
            return (
                f"{where}: expected {tp.__name__} (a member such as "
                f"{tp.__name__}.{next(iter(tp)).name}), got {type(value).__name__} {_show(value)}"
            )
        return None
    if _is_record(tp):
        if type(value) is not tp:
            return f"{where}: expected {tp.__name__}, got {type(value).__name__} {_show(value)}"
        for name, field_type in _record_fields(tp):
            sub = f"{path}.{name}" if path else name
            found = _problem(getattr(value, name), field_type, sub)
            if found is not None:
                return found
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        if not any(type(value) is type(arg) and value == arg for arg in args):
            return f"{where}: expected one of {args!r}, got {_show(value)}"
        return None
    if origin is list:
        if type(value) is not list:
            return f"{where}: expected list, got {type(value).__name__} {_show(value)}"
        return _items_problem(value, [args[0]] * len(value), path)
    if origin is tuple:
        if type(value) is not tuple:
            return f"{where}: expected tuple, got {type(value).__name__} {_show(value)}"
        if len(args) == 2 and args[1] is Ellipsis:
            return _items_problem(value, [args[0]] * len(value), path)
        if len(value) != len(args):
            return f"{where}: expected {len(args)} items, got {len(value)}"
        return _items_problem(value, list(args), path)
    if origin is dict:
        if type(value) is not dict:
            return f"{where}: expected dict, got {type(value).__name__} {_show(value)}"
        for key, item in value.items():
            found = _key_problem(key, path) or _problem(item, args[1], f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    return f"{where}: {_describe(tp)} cannot be stored"


def _items_problem(items: Any, item_types: list[Any], path: str) -> str | None:
    for index, (item, item_type) in enumerate(zip(items, item_types, strict=True)):
        found = _problem(item, item_type, f"{path}[{index}]")
        if found is not None:
            return found
    return None


def _key_problem(key: Any, path: str) -> str | None:
    if not isinstance(key, str):
        return (
            f"{_where(path)}: dict key {_show(key)} is a {type(key).__name__}, not a str "
            "(JSON keys are strings)"
        )
    return _text_problem(key, f"{path}[{key!r}]")


def _float_problem(value: float, path: str) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{_where(path)}: {value!r} is not storable (JSON has no NaN or infinity)"
    return None


def _text_problem(text: str, path: str) -> str | None:
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return (
        f"{_where(path)}: contains the lone surrogate {found.group()!r} at index "
        f"{found.start()}, which is not valid Unicode (bytes decoded with 'surrogateescape', "
        "e.g. a file name from os.listdir?); decode with errors='replace' first"
    )


def _json_problem(value: Any, path: str, tp: Any = Any) -> str | None:
    """Problems of a value declared ``Any`` (or bare ``list``/``tuple``/``dict``)."""
    where = _where(path)
    if tp in (list, tuple, dict) and type(value) is not tp:
        return f"{where}: expected {tp.__name__}, got {type(value).__name__} {_show(value)}"
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return _float_problem(value, path)
    if isinstance(value, str):
        return _text_problem(value, path)
    if type(value) is list or (tp is tuple and type(value) is tuple):
        return _items_problem(value, [Any] * len(value), path)
    if type(value) is dict:
        for key, item in value.items():
            found = _key_problem(key, path) or _json_problem(item, f"{path}[{key!r}]")
            if found is not None:
                return found
        return None
    return (
        f"{where}: a {type(value).__name__} is not a JSON value (declared Any: use dict with "
        "str keys, list, str, int, float, bool or None)"
    )


# -- the codec ----------------------------------------------------------------------------------


@attrs.frozen
class TypeCodec:
    """Encoder and decoder for one declared type."""

    tp: Any
    encode: Callable[[Any, str], str]
    """``encode(value, what) -> JSON text``; ``what`` names the value in error messages."""
    decode: Callable[[str, str], Any]
    """``decode(text, what) -> value``."""


def _iso_structure(kind: type[date]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _type: Any) -> Any:
        if not isinstance(value, str):
            raise TypeError(f"expected {kind.__name__} as ISO text, got {type(value).__name__}")
        return kind.fromisoformat(value)

    return structure


def _enum_unstructure(value: Any) -> Any:
    # Registered for every Enum: the declared class is checked by the round trip, this one
    # only turns a non-member (a str given for an enum field) into a clean failure.
    if not isinstance(value, enum.Enum):
        raise TypeError(f"expected an enum member, got {type(value).__name__} {_show(value)}")
    return value.value


def _enum_structure(value: Any, tp: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"expected a value of {tp.__name__}, got {type(value).__name__}")
    return tp(value)


class Codec:
    """One cattrs converter shared by every job of a ``Jobs`` registry."""

    def __init__(self) -> None:
        # forbid_extra_keys: a stored key the class does not have is refused, never dropped.
        conv = cattrs.Converter(forbid_extra_keys=True)
        conv.register_structure_hook(str, _strict(str, (str,)))
        conv.register_structure_hook(int, _strict(int, (int,)))
        conv.register_structure_hook(float, _strict(float, (int, float)))
        conv.register_structure_hook(bool, _strict(bool, (bool,)))
        conv.register_unstructure_hook(datetime, datetime.isoformat)
        conv.register_structure_hook(datetime, _iso_structure(datetime))
        conv.register_unstructure_hook(date, date.isoformat)
        conv.register_structure_hook(date, _iso_structure(date))
        self._conv = conv
        self._types = _Types(conv)
        self._codecs: dict[Any, TypeCodec] = {}

    def for_type(self, tp: Any) -> TypeCodec:
        """Return (and cache) the codec of a declared state or event type.

        Raises:
            TypeError: ``tp`` (or the type of one of its fields) cannot be stored; the message
                names the field path and the type.
        """
        codec = self._codecs.get(tp)
        if codec is None:
            codec = self._codecs[tp] = self._build(tp)
        return codec

    def _build(self, tp: Any) -> TypeCodec:
        self._types.check(tp, "")
        conv = self._conv
        type_name = _describe(tp)
        members = _union_members(tp)
        check_types: tuple[type, ...] | None
        if members is not None and all(_is_record(m) for m in members if m is not _NONE_TYPE):
            check_types = tuple(members)
        elif _is_record(tp):
            check_types = (tp,)
        else:
            check_types = None  # checked by the round trip and the walk
        try:
            unstructure = conv.get_unstructure_hook(tp)
            structure = conv.get_structure_hook(tp)
        except cattrs.errors.StructureHandlerNotFoundError:  # pragma: no cover - checked above
            raise _refuse(tp, "") from None

        def refuse(value: Any, what: str, exc: BaseException | None) -> ValidationError:
            problem = _problem(value, tp, "")
            if problem is None:
                problem = _cause(exc) if exc is not None else "it does not read back equal"
            return ValidationError(f"{what} does not fit {type_name}: {problem}")

        def encode(value: Any, what: str) -> str:
            if check_types is not None and not isinstance(value, check_types):
                raise ValidationError(
                    f"{what} must be {type_name}, got {type(value).__name__}: {_show(value)}"
                )
            try:
                raw = unstructure(value)
                text = _dumps(raw)
                # The round trip through the text itself catches what attrs does not check
                # (wrong field types) and what JSON would change (int keys, tuples in an Any
                # field) before it is stored and breaks every later step.
                same = structure(_loads(text), tp) == value
            except Exception as exc:  # any failure here is the value's: find the field
                raise refuse(value, what, exc) from None
            if _SURROGATE.search(text) is not None or not same:
                problem = _problem(value, tp, "")
                if problem is not None:
                    raise ValidationError(f"{what} does not fit {type_name}: {problem}")
                # An attrs class with eq=False compares by identity: the walk found nothing.
            return text

        def decode(text: str, what: str) -> Any:
            try:
                return structure(_loads(text), tp)
            # from None: the message says it all; cattrs' exception groups would only make
            # the recorded error text long.
            except cattrs.BaseValidationError as exc:
                raise ValidationError(_explain(exc, what, type_name)) from None
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise ValidationError(f"{what} does not fit {type_name}: {_cause(exc)}") from None

        return TypeCodec(tp, encode, decode)


def _cause(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(_flatten(exc, ""))
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)


def _explain(exc: cattrs.BaseValidationError, what: str, type_name: str) -> str:
    return f"{what} does not fit {type_name}: " + "; ".join(_flatten(exc, ""))


def _flatten(exc: BaseException, path: str) -> list[str]:
    """One line per leaf error, each naming the field path (``items[2].name``) and the reason."""
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        with_notes, without = exc.group_exceptions()
        lines: list[str] = []
        for sub, note in with_notes:
            name = getattr(note, "name", None)
            step = f".{name}" if name is not None else f"[{getattr(note, 'index', '?')!r}]"
            lines += _flatten(sub, f"{path}{step}" if path or name is None else str(name))
        for sub in without:
            lines += _flatten(sub, path)
        return lines
    where = _where(path)
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        keys = ", ".join(repr(k) for k in sorted(exc.extra_fields))
        plural = "keys" if len(exc.extra_fields) > 1 else "key"
        inside = f"{where}: " if path else ""
        return [
            f"{inside}stored {plural} {keys} not in {exc.cl.__name__} (a field renamed or "
            "removed? bump the job's version= and give migrate= a step that moves or drops it)"
        ]
    if isinstance(exc, KeyError):
        return [
            f"{where}: required field missing from the stored object (a field added without a "
            "default? give it one, or bump version= with a migrate= step that sets it)"
        ]
    return [f"{where}: {exc}"]


def upgrade(
    text: str, stored: int, version: int, migrate: Mapping[int, Callable[[Any], Any]], what: str
) -> str:
    """The JSON text of a stored object of version ``stored``, migrated to ``version``.

    ``migrate[k]`` turns the object of version ``k`` (plain JSON: dicts, lists, str, int,
    float, bool, None) into that of version ``k + 1``; the chain runs from ``stored`` up.
    The text is returned unchanged when the versions agree. ``what`` names the object
    (instance, job and version) in messages. Nothing is written here: the caller stores the
    result with ``version`` when its step commits.

    Raises:
        ValidationError: ``stored`` is newer than ``version`` (written by newer code); a
            migration raised, or returned something that is not plain JSON.
    """
    if stored == version:
        return text
    if stored > version:
        raise ValidationError(
            f"{what} was written by version {stored} of the job's definition, newer than "
            f"this code's version {version}; it is left as it was (run the newer code, or give "
            "this one that version and a migration)"
        )
    value = _loads(text)
    for k in range(stored, version):
        try:
            value = migrate[k](value)
        except Exception as exc:  # the user's migration: its failure is this object's
            raise ValidationError(
                f"{what}: migrate[{k}] (version {k} -> {k + 1}) raised {type(exc).__name__}: {exc}"
            ) from None
        problem = _json_problem(value, "")
        if problem is not None:
            raise ValidationError(
                f"{what}: migrate[{k}] (version {k} -> {k + 1}) returned a value that is not "
                f"plain JSON: {problem}"
            )
    return _dumps(value)


def dumps(value: Any) -> str:
    """Compact JSON for internal records (history data)."""
    return _dumps(value)
