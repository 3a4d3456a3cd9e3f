"""``--app MODULE:ATTR``: the application's ``Jobs``, loaded the one way the daemon,
``durajobs check`` and ``durajobs doctor --app`` all load it (one wording of its errors).

The module is imported from ``sys.path`` and the current directory; the attribute may be
dotted and must be a ``durajobs.Jobs``. ``definitions_only=True`` (check and doctor) imports
it under ``durajobs.jobs.definitions_only()``: the application's own ``Jobs(...)`` then keeps
its definitions and opens, creates and migrates nothing. A check run before a deploy must not
migrate the database the old daemons still serve.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Any

from .errors import ValidationError
from .jobs import Jobs
from .jobs import definitions_only as only_definitions

__all__ = ["AppError", "load_app"]

ERROR_TEXT_MAX = 500


class AppError(ValidationError):
    """``--app`` cannot be used; the message is the one line shown to the user."""


def load_app(spec: str, *, definitions_only: bool = False) -> Jobs:
    """Import ``module:attribute`` (the attribute may be dotted) and check it is a ``Jobs``.

    Args:
        spec: ``MODULE:ATTR``, e.g. ``myapp.jobs:jobs``.
        definitions_only: import under ``durajobs.jobs.definitions_only()``: a ``Jobs`` the
            import makes opens no database (``durajobs check``, ``durajobs doctor --app``).

    Raises:
        AppError: the module or attribute is missing, the import failed, or it is not a Jobs.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise AppError(
            f"--app must look like module:attribute (e.g. myapp.jobs:jobs), got {spec!r}"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    importing = only_definitions() if definitions_only else contextlib.nullcontext()
    try:
        with importing:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise AppError(f"--app {spec}: no module named {exc.name!r}") from None
        raise AppError(f"--app {spec}: importing {module_name!r} failed: {_one_line(exc)}") from exc
    except Exception as exc:  # the app's import-time code may raise anything: report it
        raise AppError(f"--app {spec}: importing {module_name!r} failed: {_one_line(exc)}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppError(
                f"--app {spec}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not isinstance(target, Jobs):
        raise AppError(
            f"--app {spec}: {attribute!r} is a {type(target).__name__}, not a durajobs.Jobs"
        )
    return target


def _one_line(exc: BaseException) -> str:
    text = " ".join((f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__).split())
    return text if len(text) <= ERROR_TEXT_MAX else text[: ERROR_TEXT_MAX - 1] + "…"
