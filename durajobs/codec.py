"""Typed state and events to JSON text and back, with one cattrs converter.

States and events are attrs classes (or unions of them, tagged with a ``"_type"`` field) or
plain JSON-able values. Decoding is strict about primitive types (a ``str`` field does not
silently accept ``123``) so that what a step writes is what the next step reads; a mismatch is
a :class:`~durajobs.errors.ValidationError` naming the field and the reason. Adding a field
with a default to a state class keeps old rows loadable; unknown keys in old rows are ignored.

Pure: imports no I/O modules.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs
import cattrs
from cattrs.strategies import configure_tagged_union

from .errors import ValidationError

__all__ = ["Codec", "TypeCodec"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_loads = json.loads


def _strict(kind: type, accept: tuple[type, ...]) -> Callable[[Any, Any], Any]:
    name = kind.__name__

    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got bool {value!r}")
        if not isinstance(value, accept):
            raise TypeError(f"expected {name}, got {type(value).__name__} {value!r}")
        return float(value) if kind is float else value  # type: ignore[arg-type]

    return structure


def _union_members(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def _describe(tp: Any) -> str:
    members = _union_members(tp)
    if members is not None:
        return " | ".join(_describe(m) for m in members)
    return getattr(tp, "__name__", repr(tp))


@attrs.frozen
class TypeCodec:
    """Encoder and decoder for one declared type."""

    tp: Any
    encode: Callable[[Any, str], str]
    """``encode(value, what) -> JSON text``; ``what`` names the value in error messages."""
    decode: Callable[[str, str], Any]
    """``decode(text, what) -> value``."""


class Codec:
    """One cattrs converter shared by every job of a ``Jobs`` registry."""

    def __init__(self) -> None:
        conv = cattrs.Converter(forbid_extra_keys=False)
        conv.register_structure_hook(str, _strict(str, (str,)))
        conv.register_structure_hook(int, _strict(int, (int,)))
        conv.register_structure_hook(float, _strict(float, (int, float)))
        conv.register_structure_hook(bool, _strict(bool, (bool,)))
        self._conv = conv
        self._codecs: dict[Any, TypeCodec] = {}

    def for_type(self, tp: Any) -> TypeCodec:
        """Return (and cache) the codec of a declared state or event type."""
        codec = self._codecs.get(tp)
        if codec is None:
            codec = self._codecs[tp] = self._build(tp)
        return codec

    def _build(self, tp: Any) -> TypeCodec:
        conv = self._conv
        members = _union_members(tp)
        if members is not None and all(attrs.has(m) for m in members if m is not type(None)):
            concrete = tuple(m for m in members if m is not type(None))
            if len(concrete) > 1:
                configure_tagged_union(tp, conv, tag_name="_type")
            check_types: tuple[type, ...] | None = tuple(members)
        elif tp is None or tp is Any or tp is object:
            check_types = None
        elif isinstance(tp, type):
            check_types = (tp,)
        else:
            check_types = None  # generic aliases like dict[str, int]: checked by round-trip
        type_name = _describe(tp)
        try:
            unstructure = conv.get_unstructure_hook(tp)
            structure = conv.get_structure_hook(tp)
            structure(None, tp)  # probe: an unsupported type fails here, whatever the value
        except cattrs.errors.StructureHandlerNotFoundError:
            raise TypeError(
                f"durajobs cannot store {type_name}: use an attrs class, a union of attrs "
                "classes, or a JSON type (dict, list, str, int, float, bool)"
            ) from None
        except (cattrs.BaseValidationError, TypeError, ValueError, KeyError, AttributeError):
            pass  # a complaint about the probe value None: the type itself is supported
        strict_check = check_types is not None and tp not in (float,)

        def encode(value: Any, what: str) -> str:
            if strict_check and not isinstance(value, check_types):  # type: ignore[arg-type]
                raise ValidationError(
                    f"{what} must be {type_name}, got {type(value).__name__}: {value!r:.200}"
                )
            try:
                raw = unstructure(value)
                text = _dumps(raw)
                # A round trip catches wrong field types inside attrs classes, which attrs does
                # not check, before they are stored and break every later step.
                structure(raw, tp)
            except cattrs.BaseValidationError as exc:
                raise ValidationError(_explain(exc, what, type_name)) from exc
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"{what} does not fit {type_name}: {exc}") from exc
            return text

        def decode(text: str, what: str) -> Any:
            try:
                return structure(_loads(text), tp)
            except cattrs.BaseValidationError as exc:
                raise ValidationError(_explain(exc, what, type_name)) from exc
            except (TypeError, ValueError, KeyError) as exc:
                raise ValidationError(f"{what} does not fit {type_name}: {exc}") from exc

        return TypeCodec(tp, encode, decode)


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
    where = f"field {path!r}" if path else "value"
    if isinstance(exc, KeyError):
        return [f"{where}: required field missing"]
    return [f"{where}: {exc}"]


def dumps(value: Any) -> str:
    """Compact JSON for internal records (history data)."""
    return _dumps(value)
