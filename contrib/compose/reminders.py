"""The example application of the compose files in this directory: reminders over HTTP.

One module serves both containers of ``compose.yaml`` (and of ``compose.postgres.yaml``):

- the **app** container runs its WSGI ``app`` under waitress
  (``waitress-serve --listen=0.0.0.0:8000 reminders:app``): ``POST /reminders/<id>`` with
  ``{"text": "...", "at": "5s"}`` (a duration from now, or an ISO time with its offset, e.g.
  ``"2026-05-09T08:00:00Z"``) sets the Task's alarm; ``GET /reminders/<id>`` shows it;
  ``GET /healthz`` answers 200 while the database answers, 503 otherwise;
- the **daemon** container runs ``durajobs-daemon --app reminders:jobs``: it sleeps until the
  alarm and runs ``send_reminder`` (here it only records when it ran; send the e-mail there).

Both open ``$DURAJOBS_DB``: a file on the shared volume (``/data/jobs.db``) or a PostgreSQL URL.
The web process never runs an alarm itself; setting one wakes the daemon in the other
container (the ``<db>.wake`` socket file beside the database, or ``NOTIFY`` on PostgreSQL).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import attrs

from durajobs import DurajobsError, ExecutionError, Jobs, Task, TaskContext


@attrs.define
class Reminder:
    text: str
    due_at: datetime  # when it should go out
    sent_at: datetime | None = None  # when the daemon sent it


@attrs.define
class Remind:
    text: str
    at: str  # an ISO time with its offset, or a duration from now ("5s", "2 minutes")


def on_event(event: Remind, ctx: TaskContext[Reminder]) -> None:
    """Runs in the web process, inside ``send``: store the reminder and set its alarm."""
    try:
        when: datetime | str = datetime.fromisoformat(event.at)
    except ValueError:
        when = event.at  # a duration; a time in the past is due at once
    ctx.state = Reminder(event.text, ctx.schedule(when))


def send_reminder(ctx: TaskContext[Reminder]) -> None:
    """Runs in the daemon's worker when the alarm is due."""
    assert ctx.state is not None  # on_event always sets it
    ctx.state = attrs.evolve(ctx.state, sent_at=datetime.now(UTC))


REGISTRY = {
    "reminders": Task(state=Reminder, event=Remind, on_event=on_event, execute=send_reminder)
}

# One Jobs per process, made at import: the web server's threads share it, and the daemon
# imports it (``--app reminders:jobs``) and serves the same location.
jobs = Jobs(os.environ["DURAJOBS_DB"], REGISTRY)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
PREFIX = "/reminders/"


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application (``waitress-serve reminders:app``)."""
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    try:
        if path == "/healthz" and method == "GET":
            jobs.task("reminders").status("healthz")  # one read: the database answers
            return _reply(start_response, "200 OK", {"status": "ok"})
        if path.startswith(PREFIX) and len(path) > len(PREFIX):
            reminder_id = path[len(PREFIX) :]
            if method == "POST":
                size = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(size) or b"{}")
                event = Remind(str(body["text"]), str(body["at"]))
                result = jobs.task("reminders").send(reminder_id, event)
                return _reply(start_response, "201 Created", {"id": result.instance_id})
            if method == "GET":
                state = jobs.task("reminders").get_state(reminder_id)
                if state is None:
                    return _reply(start_response, "404 Not Found", {"error": "no such reminder"})
                shown = attrs.asdict(state, value_serializer=_iso)
                return _reply(start_response, "200 OK", shown)
        return _reply(start_response, "404 Not Found", {"error": f"no route {method} {path}"})
    except (KeyError, TypeError, ValueError) as exc:
        return _reply(start_response, "400 Bad Request", {"error": f"bad request: {exc!r}"})
    except ExecutionError as exc:  # on_event refused it: a naive time, a bad duration
        return _reply(start_response, "400 Bad Request", {"error": str(exc)})
    except DurajobsError as exc:  # StorageError: the database is unreachable or unusable
        return _reply(start_response, "503 Service Unavailable", {"error": str(exc)})


def _reply(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def _iso(_instance: object, _field: object, value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value
