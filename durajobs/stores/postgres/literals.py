"""SQL literals for the parameters of the hot path's simple queries, written here, not by psycopg.

A client call's commit is one simple query (``BEGIN; EXECUTE put(...); COMMIT; ...``) and its
claim is another (the claim, then the read after it): several statements, so their parameters
are written into the text. psycopg's ``ClientCursor.mogrify`` took 51 µs for the put's 28
parameters, a fifth of a ``task.send``'s client CPU (benchmarks/FINDINGS.md); ``bind`` writes
the same values in a few µs.

Each value goes as a quoted literal of unknown type (``'...'``, or ``E'...'`` when it holds a
backslash, right whatever ``standard_conforming_strings`` says), which PostgreSQL parses with the
input function of the type the statement gives it (the ``PREPARE``'s declared parameter types,
or a cast in the statement): what server-side binding in text format does. A list becomes an
array literal (``'{"a",NULL}'``). ``None`` is ``NULL``. Unlike psycopg's client-side binding,
whose typed constants PostgreSQL converts, a value of another type than the statement's is
parsed by that type's input function: a float for a ``bigint`` is refused (the write is
rejected, a content error), not rounded. The store binds each parameter with its own type.

Only the types the store binds are written here: ``str`` (and its subclasses, such as
``Status``), ``bool``, ``int``, ``float``, ``None`` and lists of them. Anything else, or a string
holding a NUL (which PostgreSQL's text cannot hold), raises ``Unbindable`` and the caller binds
with psycopg, whose errors for such values are the store's (``content_errors``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from math import isinf, isnan

__all__ = ["Typed", "Unbindable", "bind", "literal"]

_PLACEHOLDER = re.compile(r"%(?:\((\w+)\))?s")


class Unbindable(Exception):
    """A value ``literal`` does not write: bind it with psycopg instead."""


def _text(value: object) -> str:
    """A scalar's text, as PostgreSQL's input functions read it (a subclass's own ``repr`` or
    string methods play no part)."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if isnan(value):
            return "NaN"
        if isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)  # (not numpy's "np.float64(1.5)")
    raise Unbindable(type(value).__name__)


def _element(value: object) -> str:
    """One element of an array literal (``{...}``)."""
    if value is None:
        return "NULL"
    text = _text(value)
    if isinstance(value, str):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _quoted(text: str) -> str:
    if "\x00" in text:
        raise Unbindable("NUL")
    if "\\" in text:
        return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + text.replace("'", "''") + "'"


def literal(value: object) -> str:
    """``value`` as a SQL literal of unknown type (``NULL`` for ``None``).

    Raises:
        Unbindable: a type this module does not write, or a string holding a NUL.
    """
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return _quoted("{" + ",".join([_element(v) for v in value]) + "}")
    return _quoted(_text(value))


class Typed(str):
    """A statement (psycopg's ``%s`` or ``%(name)s`` placeholders, no other ``%``) whose every
    parameter gets its type from the statement itself: a cast (``%s::bigint[]``) or a
    prepared statement's declared types (``EXECUTE name (%s, ...)``). Only such a statement
    may take ``bind``'s literals of unknown type."""

    pieces: tuple[str, ...]
    names: tuple[str | None, ...]

    def __new__(cls, text: str) -> Typed:
        typed = super().__new__(cls, text)
        parts = _PLACEHOLDER.split(text)
        typed.pieces, typed.names = tuple(parts[0::2]), tuple(parts[1::2])
        if any("%" in piece for piece in typed.pieces):
            raise ValueError(f"not a statement bind writes: {text!r}")
        return typed


def bind(statement: Typed, params: Sequence[object] | Mapping[str, object]) -> str:
    """``statement`` with ``params`` (by position, or by name for ``%(name)s``) written in.

    Raises:
        Unbindable: as ``literal``.
    """
    pieces = statement.pieces
    if isinstance(params, Mapping):
        values: Sequence[object] = [params[name] for name in statement.names]  # type: ignore[index]
    else:
        values = params
    out = [pieces[0]]
    for piece, value in zip(pieces[1:], values, strict=True):
        out.append(literal(value))
        out.append(piece)
    return "".join(out)
