"""The ``durajobs`` command's option values without pydantic, on typer >= 0.29.

typer 0.29 converts every parameter's value through a pydantic ``TypeAdapter``, built when the
parameter is first processed -- unset options too -- so every command but ``--version`` imported
pydantic: ~70 ms of CPU a command, more than the rest of ``durajobs ls`` together
(benchmarks/FINDINGS.md). The values the CLI takes need none of it: text, whole and decimal
numbers with bounds, enum choices and lists of these. ``install()`` (called by the ``durajobs``
command's ``main``, never on import) makes typer build its converter for those here (as click
did for typer <= 0.28) and leaves any other value (a bool or a path given as text, a clamped
number) to typer's own converter, built on first use.

It does nothing on typer < 0.29 (no such step), nor on a typer whose internals moved: the
command then stays correct, only slower. typer's converter is module state, so this applies to
every typer command of the process that imports ``durajobs.cli``; for the values it handles,
the results are the same as typer's (only the wording of an error differs).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from enum import Enum
from typing import Any, get_args

_UNHANDLED = object()


def _convert(annotation: Any, info: Any, value: Any, choose: Callable[..., Any], ctx: Any) -> Any:
    """``value`` as ``annotation``, ``_UNHANDLED`` for typer; ValueError when it does not fit."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return choose(value, choices=tuple(annotation), case_sensitive=info.case_sensitive, ctx=ctx)
    if annotation is str and isinstance(value, str):
        return value
    if annotation not in (int, float) or getattr(info, "clamp", False):
        return _UNHANDLED
    if not (isinstance(value, str) or type(value) is annotation):
        return _UNHANDLED
    try:
        number = annotation(value)
    except ValueError:
        kind = "integer" if annotation is int else "number"
        raise ValueError(f"{value!r} is not a valid {kind}.") from None
    if info.min is not None and not number >= info.min:
        raise ValueError(f"{value} is not >= {info.min}.")
    if info.max is not None and not number <= info.max:
        raise ValueError(f"{value} is not <= {info.max}.")
    return number


@functools.cache  # once per process
def install() -> None:
    """Convert the CLI's option values here from now on (idempotent; nothing on typer < 0.29)."""
    try:
        core: Any = importlib.import_module("typer.core")
        coercion = importlib.import_module("typer._coercion")
        choose = importlib.import_module("typer._param_types").coerce_cli_choice
        bad_parameter = importlib.import_module("typer._click.exceptions").BadParameter
        typers_build = core.build_runtime_param
        runtime_param: Any = coercion.RuntimeParam
    except (ImportError, AttributeError):  # typer < 0.29, or its internals moved
        return

    @dataclasses.dataclass(frozen=True)
    class Values(runtime_param):  # type: ignore[misc]  # typer's private base class (Any here)
        descriptor: Any

        @functools.cached_property
        def typers(self) -> Any:
            """typer's own converter, built on first use (it imports pydantic)."""
            return typers_build(self.descriptor)

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            annotation, info = self.annotation, self.parameter_info
            try:
                if self.descriptor.is_list and isinstance(value, list | tuple):
                    (item_type,) = get_args(annotation)
                    result: Any = [_convert(item_type, info, v, choose, ctx) for v in value]
                    if any(item is _UNHANDLED for item in result):
                        result = _UNHANDLED
                else:
                    result = _convert(annotation, info, value, choose, ctx)
            except ValueError as exc:
                raise bad_parameter(str(exc), ctx=ctx, param=param) from None
            if result is not _UNHANDLED:
                return result
            return self.typers._coerce_value(value, param, ctx)

    def build(descriptor: Any) -> Any:
        if descriptor.file_annotation is not None or descriptor.is_tuple:
            return typers_build(descriptor)
        return Values(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation,
            descriptor=descriptor,
        )  # fmt: skip

    core.build_runtime_param = build
