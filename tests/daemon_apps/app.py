"""The app the daemon tests serve: ``--app daemon_apps.app:jobs`` (database: $DAEMON_TEST_DB).

With $DAEMON_TEST_TRACKER, a ``Tracker`` that sends to that URL with ``flush_interval=0``; with
$DAEMON_TEST_SPANS, an OpenTelemetry provider of the app's own that appends each finished span
to that file as a JSON line (name, attributes, pid).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from daemon_apps.app_defs import REGISTRY
from durajobs import Jobs, Tracker

_url = os.environ.get("DAEMON_TEST_TRACKER")
_tracker = Tracker(_url, "test", "sk_daemon", flush_interval=0, timeout=3600) if _url else None
_tracing: Any = None
if os.environ.get("DAEMON_TEST_SPANS"):
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class _FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(os.environ["DAEMON_TEST_SPANS"], "a") as out:
                for span in spans:
                    item = {"name": span.name, "attributes": dict(span.attributes or {})}
                    out.write(json.dumps({**item, "pid": os.getpid()}) + "\n")
            return SpanExportResult.SUCCESS

    _tracing = TracerProvider()
    _tracing.add_span_processor(SimpleSpanProcessor(_FileExporter()))

jobs = Jobs(os.environ["DAEMON_TEST_DB"], REGISTRY, tracker=_tracker, tracing=_tracing)
not_jobs = "a string"
