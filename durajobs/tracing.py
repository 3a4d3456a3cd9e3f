"""OpenTelemetry spans for steps: one ``durajobs.step`` span per step (extra ``otel``).

Theory of operation
-------------------
durajobs configures no exporter and no provider of its own: spans go to the application's
``TracerProvider`` (the global one set with ``opentelemetry.trace.set_tracer_provider``, or one
passed as ``Jobs(..., tracing=provider)``). ``Jobs`` hands the engine a step watch
(``engine.Hooks.watch``) that the engine enters around each step's handlers, in the one step
path, so every kind of step gets a span: client calls, operators' actions, bulk calls' items,
``run_due`` and the daemon's workers. The span is the current span while the handlers run (a
handler's own spans, an HTTP call's, nest under it) and its parent is whatever span was current
in the caller: the request that called ``send``, the daemon's nothing (a root span).

Attributes: ``durajobs.job``, ``durajobs.kind``, ``durajobs.instance_id``, ``durajobs.step``
(the step number the step commits as), ``durajobs.attempt`` and ``durajobs.outcome`` (the
step's ``Outcome``: ``ok``, ``retry``, ``failed``, ``exhausted``, ``parked``, ``terminated``,
``skipped``, ``nothing``, ``refused``, ``cleared``). A failed outcome also sets the span's
status to ERROR with the step's error text. The span covers the handlers, not the commit
(``run_due`` group-commits many steps later, in one transaction).

When it is on (``Jobs(tracing=...)``):

* ``None`` (default): when ``opentelemetry-api`` is importable, and then only once the
  application has set a global provider. Until then each step costs one read of the API's
  global (``opentelemetry.trace._TRACER_PROVIDER``; the public getter where it is missing)
  and makes no span; without the package the engine has no watch at all (nothing per step).
* ``True``: always with the global provider (spans are dropped by OpenTelemetry's no-op
  provider until one is set); ``opentelemetry-api`` must be installed.
* a ``TracerProvider``: spans go to that provider.
* ``False``: never; nothing per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any

from .core.decision import Decision, Env, Outcome
from .core.rows import Instance
from .engine import StepWatch
from .errors import ValidationError

__all__ = ["SPAN_NAME", "step_watch"]

SPAN_NAME = "durajobs.step"
TRACER_NAME = "durajobs"
_FAILED = frozenset({Outcome.RETRY, Outcome.FAILED, Outcome.EXHAUSTED, Outcome.PARKED})


def step_watch(tracing: Any) -> StepWatch | None:
    """The engine's step watch for ``Jobs(tracing=...)``, or ``None`` (no spans, no cost).

    Raises:
        ValidationError: ``tracing=True`` or a provider without ``opentelemetry-api``
            installed, or ``tracing`` is not a bool, ``None`` or a ``TracerProvider``.
    """
    if tracing is False:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        if tracing is None:
            return None
        raise ValidationError(
            "tracing needs OpenTelemetry's API: pip install 'durajobs[otel]'"
        ) from None
    if tracing is None:
        return _Automatic(trace).watch
    if tracing is True:
        return _Spans(trace, trace.get_tracer(TRACER_NAME)).watch
    if not callable(getattr(tracing, "get_tracer", None)):
        raise ValidationError(
            f"tracing must be True, False, None or an OpenTelemetry TracerProvider, got {tracing!r}"
        )
    return _Spans(trace, tracing.get_tracer(TRACER_NAME)).watch


class _Spans:
    """Makes the spans with one tracer."""

    def __init__(self, trace: Any, tracer: Any) -> None:
        self._trace = trace
        self._tracer = tracer

    @contextlib.contextmanager
    def watch(self, env: Env, inst: Instance | None) -> Generator[Callable[[Decision], Decision]]:
        instance_id = env.instance_id
        base = env.base_step if inst is None else inst.step
        attributes = {
            "durajobs.job": env.job_name,
            "durajobs.kind": instance_id.partition(":")[0],
            "durajobs.instance_id": instance_id,
            "durajobs.step": base + 1,
            "durajobs.attempt": 1 if inst is None else inst.attempt,
        }
        with self._tracer.start_as_current_span(SPAN_NAME, attributes=attributes) as span:

            def seen(decision: Decision) -> Decision:
                outcome = decision.outcome
                span.set_attribute("durajobs.outcome", outcome.value)
                if outcome in _FAILED or outcome is Outcome.REFUSED:
                    error = decision.error
                    if error is None and decision.raise_error is not None:
                        error = f"{type(decision.raise_error).__name__}: {decision.raise_error}"
                    status = self._trace.Status(self._trace.StatusCode.ERROR, error)
                    span.set_status(status)
                return decision

            yield seen


class _Automatic:
    """Spans once the application has set a global provider; before that, nothing."""

    def __init__(self, trace: Any) -> None:
        self._trace = trace
        self._proxy = trace.ProxyTracerProvider
        self._spans: _Spans | None = None
        trace.get_tracer_provider()  # loads one named by OTEL_PYTHON_TRACER_PROVIDER, if any

    def watch(
        self, env: Env, inst: Instance | None
    ) -> contextlib.AbstractContextManager[Callable[[Decision], Decision]] | None:
        spans = self._spans
        if spans is None:
            # Until the app sets a provider: one read of the API's global a step. Its getter
            # (``get_tracer_provider``) reads the environment on every call (~1 us a step).
            if getattr(self._trace, "_TRACER_PROVIDER", self) is None:
                return None
            provider = self._trace.get_tracer_provider()
            if isinstance(provider, self._proxy):
                return None  # no provider set (yet): no span
            # Set once for the process (OpenTelemetry refuses a second one).
            spans = self._spans = _Spans(self._trace, provider.get_tracer(TRACER_NAME))
        return spans.watch(env, inst)
