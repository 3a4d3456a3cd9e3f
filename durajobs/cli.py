"""The ``durajobs`` command: inspect and act on a durajobs database file.

Usage: ``durajobs [--db PATH] COMMAND`` (default ``./durajobs.db``, or ``$DURAJOBS_DB``). It reads
the file directly: no daemon and no application code are needed. Every command is a few lines
over :mod:`durajobs.admin`, which does the work.

Commands::

    ls        instances sorted by next alarm (--kind --job --status --due --limit --offset,
              --json: one array, --jsonl: one object per line; every row unless --limit);
              --status terminated|purged: finished instances from the history, newest first
    show      every field of one instance, its state as JSON, last error, recent history (--json)
    terminate cancel the alarm and purge the instance (asks on a TTY unless --yes)
    trigger   make a Continuous/Task run due now; the daemon runs it
    flush     make a Debounce flush due now; the daemon runs it
    clear     discard a Debounce batch without running execute
    retry     resume a parked (failed) instance; the daemon runs it
    stats     counts by kind/job/status, alarms due/overdue, last hour's steps (--json)
    doctor    the store, alarms stuck overdue, daemons, parked/failing/orphaned instances
              (--json, --app MODULE:ATTR); exit 0 healthy, 1 warnings, 2 failures
    tail      the latest history records; -f follows new ones like ``journalctl -f``
    serve     the web dashboard (--host --port --read-only --password-file --insecure)
    copy      copy a whole database, SOURCE to an empty DEST, any store to any store

An id is ``KIND:JOB:ID`` (e.g. ``continuous:token_refresher:user-123``) or the three words
``KIND JOB ID``.

Output: rich tables when stdout is a terminal, plain aligned text when piped, no colours with
``NO_COLOR``; ``--json`` for scripts. JSON field names are stable: see ``InstanceInfo.to_dict``,
``InstanceDetail.to_dict``, ``Stats.to_dict`` and ``DoctorReport.to_dict`` in ``admin``. Times are
ISO 8601 in UTC.

Errors print one line on stderr (``durajobs: error: ...``), never a traceback. Exit codes:

====  ==========================================================================================
0     success
1     an action refused or failed: wrong kind or status, instance busy past the wait,
      confirmation declined; ``doctor``: warnings (parked, failing or orphaned instances,
      alarms overdue while a daemon serves)
2     bad usage: unknown option or command, malformed instance id (typer's usage errors);
      ``doctor``: failures (the store unreachable or unusable, alarms overdue with no daemon)
3     not found: no such instance
4     storage problem: the file is missing, unreadable, not a durajobs database, corrupt,
      read-only, or locked
====  ==========================================================================================
"""

# No ``from __future__ import annotations`` here: typer reads every command's annotations at
# start-up, and string annotations are compiled and evaluated twice each (``inspect.signature``
# and ``get_type_hints``), ~5 ms of every command. Names imported only for type checking are
# quoted instead. json, rich and durajobs.admin are imported where they are used, so that
# `durajobs --version` pays for Python and typer only.

import functools
import os
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from . import _typer_values
from .errors import (
    DurajobsError,
    InstanceBusyError,
    InstanceNotFoundError,
    InvalidStateError,
    JobNotFoundError,
    StorageError,
    ValidationError,
)

if TYPE_CHECKING:
    from rich.console import Console

    from .admin import Admin, FinishedInstance, HistoryEntry, InstanceDetail, InstanceInfo, Stats

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_STORAGE", "EXIT_USAGE", "app", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_STORAGE = 4

DEFAULT_DB = "durajobs.db"

P = ParamSpec("P")
T = TypeVar("T")

app = typer.Typer(
    name="durajobs",
    help="Inspect and act on a durajobs database file (no daemon or application code needed).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help and usage errors: one clear message, fast start-up
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Kind(StrEnum):
    """Job kinds (for ``--kind``)."""

    continuous = "continuous"
    debounce = "debounce"
    task = "task"


class Status(StrEnum):
    """Stored statuses, and those of finished instances (for ``--status``)."""

    running = "running"
    debouncing = "debouncing"
    active = "active"
    idle = "idle"
    failed = "failed"
    failing = "failing"  # running Continuous instances whose last run failed (a flag)
    paused = "paused"  # paused instances, and those of paused jobs (a flag)
    terminated = "terminated"  # finished: ended by a terminate (from the history)
    purged = "purged"  # finished: terminated, flushed or cleared (from the history)


# -- plumbing -------------------------------------------------------------------------------


def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    line = " ".join(message.split())  # one line, whatever the message holds
    typer.echo(f"durajobs: error: {line}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Map durajobs errors to one stderr line and an exit code."""
    try:
        yield
    except (InstanceNotFoundError, JobNotFoundError) as exc:
        _fail(str(exc), EXIT_NOT_FOUND)
    except StorageError as exc:
        _fail(str(exc), EXIT_STORAGE)
    except ValidationError as exc:
        _fail(str(exc), EXIT_USAGE)
    except (InvalidStateError, InstanceBusyError) as exc:
        _fail(str(exc), EXIT_FAILED)
    except DurajobsError as exc:
        _fail(str(exc), EXIT_FAILED)
    except UnicodeError as exc:
        # Text in the file that is not UTF-8 (written by another program): one line, no
        # traceback. (A lone surrogate from the command line is refused in main.)
        _fail(f"the database holds text that is not valid UTF-8: {exc}", EXIT_STORAGE)
    except BrokenPipeError:
        # The reader went away (`durajobs ls | head`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_OK) from None
    except OSError as exc:  # any other I/O failure: one line, not a traceback
        _fail(str(exc), EXIT_STORAGE)


def _command(fn: Callable[P, T]) -> Callable[P, T]:
    """Register ``fn`` as a command whose durajobs errors become a line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with _errors():
            return fn(*args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover  (_errors exits or re-raises)

    app.command()(wrapper)
    return wrapper


def _db(ctx: typer.Context) -> str:
    obj = ctx.find_root().obj
    return str(obj["db"]) if isinstance(obj, dict) else DEFAULT_DB


def _admin(ctx: typer.Context) -> "Admin":
    from .admin import Admin

    return Admin(_db(ctx))


def _instance_id(parts: Sequence[str]) -> str:
    from .admin import parse_instance_id

    return parse_instance_id(*parts)


def _tty() -> bool:
    return sys.stdout.isatty()


def _console() -> "Console":
    from rich.console import Console

    # rich honours NO_COLOR itself; highlight=False keeps ids and numbers unstyled.
    return Console(highlight=False, no_color="NO_COLOR" in os.environ or None)


def _print_json(value: Any) -> None:
    import json

    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _print_json_array(items: Iterable[dict[str, Any]]) -> None:
    """What ``_print_json(list(items))`` prints, written item by item as they come."""
    import json

    write = sys.stdout.write  # not typer.echo: a million rows pay for every call
    opening = "[\n  "
    for item in items:
        write(opening + json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n  "))
        opening = ",\n  "
    write("[]\n" if opening == "[\n  " else "\n]\n")


def _plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=True)]
        typer.echo(indent + "  ".join(cells).rstrip())


def _rich_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], styles: Sequence[str | None] = ()
) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in headers:
        table.add_column(header, overflow="fold")
    for i, row in enumerate(rows):
        table.add_row(*row, style=styles[i] if i < len(styles) else None)
    _console().print(table)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], styles: Sequence[str | None] = ()
) -> None:
    if _tty():
        _rich_table(headers, rows, styles)
    else:
        _plain_table(headers, rows)


def _when(value: Any, now: float) -> str:
    """An aware datetime as ``2026-11-23 13:40:00 (in 4m)``; ``-`` for None."""
    from .admin import relative

    if value is None:
        return "-"
    return f"{value:%Y-%m-%d %H:%M:%S} ({relative(value.timestamp(), now)})"


def _at(value: Any) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


# -- the app --------------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"durajobs {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    db: Annotated[
        str,
        typer.Option(
            "--db", envvar="DURAJOBS_DB", metavar="PATH", show_default=True,
            help="The database file (env DURAJOBS_DB).",
        ),
    ] = DEFAULT_DB,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:  # fmt: skip
    """Inspect and act on a durajobs database file (no daemon or application code needed)."""
    ctx.obj = {"db": db}


# -- reads ----------------------------------------------------------------------------------


@_command
def ls(
    ctx: typer.Context,
    kind: Annotated[Kind | None, typer.Option(help="Only this kind.")] = None,
    job: Annotated[str | None, typer.Option(help="Only this job name.")] = None,
    status: Annotated[
        Status | None,
        typer.Option(
            help="Only this status; failing: running, last run failed; paused: paused "
            "instances and those of paused jobs; terminated, purged: finished instances."
        ),
    ] = None,
    due: Annotated[bool, typer.Option("--due", help="Only alarms due now.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Rows [default: 50 in a table, every row with --json/--jsonl]."),
    ] = None,
    offset: Annotated[int, typer.Option(min=0, help="Rows to skip.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per line.")] = False,
) -> None:
    """List instances, sorted by next alarm (those without one last); with --status
    terminated or purged, the finished ones from the history, newest first."""
    import json
    from itertools import islice

    from .admin import FINISHED_STATUSES

    if limit is None and not (as_json or as_jsonl):
        limit = 50  # a page for people; scripts get every row
    finished = status is not None and status.value in FINISHED_STATUSES
    if finished and due:
        _fail("--due lists alarms; finished instances have none", EXIT_USAGE)
    selected = status.value if status else None
    filters = {"kind": kind.value if kind else None, "job": job}
    with _admin(ctx) as admin:
        now = admin.now()
        rows: Generator[FinishedInstance | InstanceInfo]
        skip = offset
        if finished:
            rows = admin.all_finished(status=str(selected), **filters)
        elif limit is None:
            rows = admin.all_instances(status=selected, due=due, **filters)
        else:  # one page, read with its offset
            listed = admin.ls(status=selected, due=due, limit=limit + 1, offset=offset, **filters)
            rows, skip = (row for row in listed), 0
        with closing(rows):  # ends the read snapshot before the database is closed
            page = islice(rows, skip, None if limit is None else skip + limit + 1)
            if as_json:
                _print_json_array(row.to_dict() for row in islice(page, limit))
            elif as_jsonl:
                write = sys.stdout.write
                for row in islice(page, limit):
                    write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
            else:
                _ls_page(list(page), limit or 0, offset, now)


def _ls_page(
    rows: "Sequence[FinishedInstance | InstanceInfo]", limit: int, offset: int, now: float
) -> None:
    from .admin import FinishedInstance

    more, rows = len(rows) > limit, rows[:limit]
    if not rows:
        typer.echo("no instances match" if offset == 0 else "no more instances", err=True)
        return
    finished = [r for r in rows if isinstance(r, FinishedInstance)]
    if finished:
        _finished_table(finished)
    else:
        _ls_table([r for r in rows if not isinstance(r, FinishedInstance)], now)
    if more:
        typer.echo(f"(more: --offset {offset + limit})", err=True)


def _ls_table(rows: "Sequence[InstanceInfo]", now: float) -> None:
    headers = ["INSTANCE", "KIND", "JOB", "STATUS", "NEXT ALARM (UTC)", "RUNS/EVENTS",
               "ATTEMPT", "LAST ERROR"]  # fmt: skip
    cells, styles = [], []
    for r in rows:
        alarm = _when(r.next_alarm, now)
        if r.alarm_reason in ("trigger", "manual"):
            alarm += f" [{r.alarm_reason}]"
        shown = f"{r.status} (failing)" if r.failing else r.status
        if r.paused:
            shown += " (paused)"
        cells.append([
            r.instance_id, r.kind, r.job, shown, alarm, f"{r.run_count}/{r.event_count}",
            r.attempt_label, r.error_summary or "-",
        ])  # fmt: skip
        late = r.next_alarm is not None and r.next_alarm.timestamp() < now - 60
        styles.append("red" if r.status == "failed" or r.failing else "yellow" if late else None)
    _table(headers, cells, styles)


def _finished_table(rows: "Sequence[FinishedInstance]") -> None:
    headers = ["INSTANCE", "KIND", "JOB", "ENDED", "AT (UTC)", "REASON", "ERROR"]
    cells = []
    for r in rows:
        cells.append([r.instance_id, r.kind, r.job, r.ended, _at(r.ended_at), r.reason or "-",
                      r.error or "-"])  # fmt: skip
    _table(headers, cells)


@_command
def show(
    ctx: typer.Context,
    instance: Annotated[list[str], typer.Argument(metavar="ID | KIND JOB ID", show_default=False)],
    history: Annotated[int, typer.Option("--history", "-n", min=0, help="History records.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Every field of one instance: state, alarm, counters, last error, recent history."""
    instance_id = _instance_id(instance)
    with _admin(ctx) as admin:
        detail = admin.show(instance_id, history=history)
        now = admin.now()
    if as_json:
        _print_json(detail.to_dict())
    elif _tty():
        _show_rich(detail, now)
    else:
        _show_plain(detail, now)


def _show_fields(detail: "InstanceDetail", now: float) -> list[tuple[str, str]]:
    kind, job, user_id = detail.instance_id.split(":", 2)
    fields = [("instance", detail.instance_id), ("kind", kind), ("job", job), ("id", user_id),
              ("status", detail.status)]  # fmt: skip
    info = detail.info
    if info is not None and info.failing:
        fields.append(("failing", "yes: the last run failed after its retries and was skipped"))
    if info is not None and info.paused:
        fields.append(("paused", "yes: no alarm step runs until `durajobs resume`"))
    if info is None:
        ended = detail.finished
        if ended is not None:
            fields += [("ended", ended.ended), ("ended at", _when(ended.ended_at, now)),
                       ("reason", ended.reason or "-")]  # fmt: skip
            if ended.error:
                fields.append(("error", ended.error))
        return [
            *fields,
            ("note", "the instance is gone (purged); the state below is its final one"),
        ]
    alarm = _when(info.next_alarm, now)
    if info.alarm_reason:
        alarm += f"  reason: {info.alarm_reason}"
    fields += [
        ("next alarm", alarm),
        ("scheduled for", _when(info.scheduled_for, now)),
        ("runs", str(info.run_count)),
        ("events", str(info.event_count)),
        ("queued events", str(detail.queued_events)),
        _attempt_field(info),
        ("created", _at(info.created_at)),
        ("batch started", _at(info.started_at)),
        ("updated", _at(info.updated_at)),
        ("step", str(info.step)),
        ("last error", info.error_summary or "-"),
    ]
    return fields


def _attempt_field(info: "InstanceInfo") -> tuple[str, str]:
    """``attempt`` is the next one; a parked instance has none pending: its failed ones."""
    if info.status == "failed":
        return "failed attempts", (
            f"{info.failed_attempts} (parked; `durajobs retry` starts again at attempt 1)"
        )
    if info.failed_attempts:
        return "attempt", f"{info.attempt} (next; {info.failed_attempts} failed)"
    return "attempt", str(info.attempt)


def _history_cells(entries: "Sequence[HistoryEntry]") -> list[list[str]]:
    cells = []
    for h in entries:
        ms = "-" if h.duration_ms is None else f"{h.duration_ms:.1f} ms"
        cells.append([_at(h.at), h.event, str(h.step), str(h.attempt or "-"), ms,
                      h.reason or "-", h.error or "-"])  # fmt: skip
    return cells


HISTORY_HEADERS = ["AT (UTC)", "EVENT", "STEP", "ATTEMPT", "DURATION", "REASON", "ERROR"]


def _show_plain(detail: "InstanceDetail", now: float) -> None:
    import json

    fields = _show_fields(detail, now)
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        typer.echo(f"{key.ljust(width)}  {value}")
    typer.echo("state:" if detail.info is not None else "final state:")
    for line in json.dumps(detail.state, indent=2, ensure_ascii=False).splitlines():
        typer.echo("  " + line)
    if detail.info is not None and detail.info.last_error:
        typer.echo("traceback:")
        for line in detail.info.last_error.splitlines():
            typer.echo("  " + line)
    typer.echo(f"history (last {len(detail.history)}, newest last):")
    _plain_table(HISTORY_HEADERS, _history_cells(detail.history), indent="  ")


def _show_rich(detail: "InstanceDetail", now: float) -> None:
    import json

    from rich.json import JSON
    from rich.panel import Panel
    from rich.table import Table

    console = _console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in _show_fields(detail, now):
        grid.add_row(key, value, style="red" if key == "status" and value == "failed" else None)
    console.print(grid)
    title = "state" if detail.info is not None else "final state"
    console.print(Panel(JSON(json.dumps(detail.state)), title=title, title_align="left"))
    if detail.info is not None and detail.info.last_error:
        console.print(
            Panel(detail.info.last_error, title="last error", title_align="left", style="red")
        )
    console.print(f"[bold]history[/bold] (last {len(detail.history)}, newest last)")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for header in HISTORY_HEADERS:
        table.add_column(header, overflow="fold")
    for row in _history_cells(detail.history):
        table.add_row(*row)
    console.print(table)


@_command
def stats(
    ctx: typer.Context,
    overdue_after: Annotated[
        float, typer.Option(min=0, help="Seconds late before an alarm counts as overdue.")
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Counts by kind/job/status, alarms due and overdue, steps in the last hour."""
    with _admin(ctx) as admin:
        result = admin.stats(overdue_after=overdue_after)
        now = admin.now()
    if as_json:
        _print_json(result.to_dict())
    else:
        _stats_text(result, now)


def _stats_text(result: "Stats", now: float) -> None:
    from .admin import short_duration

    def line(key: str, value: str) -> None:
        typer.echo(f"  {key.ljust(12)}  {value}")

    typer.echo(f"instances     {result.total}")
    for kind, count in sorted(result.by("kind").items()):
        line(kind, str(count))
    typer.echo("by job:")
    _plain_table(
        ["KIND", "JOB", "STATUS", "COUNT"],
        [[k, j, s, str(n)] for k, j, s, n in result.counts],
        indent="  ",
    )
    typer.echo("alarms:")
    line("due now", str(result.due_now))
    worst = result.max_overdue_seconds
    late = f" (most late: {short_duration(worst)})" if result.overdue and worst is not None else ""
    line(f"overdue >{result.overdue_after:g}s", f"{result.overdue}{late}")
    line("next alarm", _when(result.next_alarm, now) if result.next_alarm else "-")
    typer.echo("last hour:")
    line("steps", str(result.last_hour_steps))
    line("failures", str(result.last_hour_failures))
    line("records", str(result.last_hour_records))
    if result.paused:
        typer.echo(f"paused        {', '.join(result.paused)}")


@_command
def doctor(
    ctx: typer.Context,
    overdue_after: Annotated[
        float, typer.Option(min=0, help="Seconds late before an alarm counts as stuck.")
    ] = 60.0,
    app_spec: Annotated[
        str | None,
        typer.Option(
            "--app", metavar="MODULE:ATTR",
            help="The application's Jobs, to name orphaned jobs (instances of jobs it does "
            "not define).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:  # fmt: skip
    """Check the database: the store, alarms stuck overdue, daemons, parked, failing and
    orphaned instances. Exit 0 healthy, 1 warnings, 2 failures."""
    from .admin import Admin
    from .health import defined_jobs, report

    defined = None
    if app_spec:
        from .apploader import load_app

        defined = defined_jobs(load_app(app_spec, definitions_only=True))
    location = _db(ctx)
    opened: list[Admin] = []

    def admin() -> Admin:
        opened.append(Admin(location))
        return opened[-1]

    try:
        result = report(
            admin, location, thorough=True, defined=defined, overdue_after=overdue_after
        )
    finally:
        for each in opened:
            each.close()
    if as_json:
        _print_json(result.to_dict())
    else:
        for check in result.checks:
            typer.echo(f"{check.level.upper():<4}  {check.name:<9}  {check.detail}")
        for item in result.overdue:
            state = {True: "running", False: "stuck", None: "unknown"}[item.running]
            typer.echo(
                f"      overdue    {item.instance_id}  {item.late_seconds:.0f}s late  {state}"
            )
        typer.echo(
            {"ok": "healthy", "degraded": "degraded: warnings found",
             "failing": "failing: problems found"}[result.status]
        )  # fmt: skip
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@_command
def tail(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow new records.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Records to show.")] = 10,
    interval: Annotated[float, typer.Option(min=0.01, help="Poll interval with -f.")] = 0.5,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per line.")] = False,
) -> None:
    """The latest history records of all instances; -f follows new ones."""
    import json

    def emit(entry: "HistoryEntry") -> None:
        if as_jsonl:
            typer.echo(json.dumps(entry.to_dict(), ensure_ascii=False))
        else:
            typer.echo(_tail_line(entry))
        sys.stdout.flush()

    with _admin(ctx) as admin:
        recent = admin.recent(lines) if lines else []
        for entry in recent:
            emit(entry)
        if not follow:
            return
        after = recent[-1].id if recent else max((e.id for e in admin.recent(1)), default=0)
        try:
            for entry in admin.follow(after, interval=interval):
                emit(entry)
        except KeyboardInterrupt:
            return  # Ctrl-C is how a follow ends


def _tail_line(entry: "HistoryEntry") -> str:
    """``2026-11-23 13:26:52  task:orders:o-12  job.executed  step=3 attempt=1 12.3ms``."""
    parts = [_at(entry.at), entry.instance_id, entry.event, f"step={entry.step}"]
    if entry.attempt is not None:
        parts[-1] += f" attempt={entry.attempt}"
    if entry.duration_ms is not None:
        parts[-1] += f" {entry.duration_ms:.1f}ms"
    if entry.reason:
        parts.append(f"reason: {entry.reason}")
    if entry.error:
        parts.append(f"error: {entry.error}")
    return "  ".join(parts)


# -- actions --------------------------------------------------------------------------------

IdArgument = Annotated[list[str], typer.Argument(metavar="ID | KIND JOB ID", show_default=False)]


@_command
def terminate(
    ctx: typer.Context,
    instance: IdArgument,
    reason: Annotated[str | None, typer.Option(help="Recorded in the history.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Cancel the alarm and purge the instance (its history keeps the final state)."""
    instance_id = _instance_id(instance)
    with _admin(ctx) as admin:
        admin.get(instance_id)
        if not yes and sys.stdin.isatty() and not typer.confirm(f"Terminate {instance_id}?"):
            _fail("not confirmed; nothing changed", EXIT_FAILED)
        typer.echo(admin.terminate(instance_id, reason).message)


TargetArgument = Annotated[str, typer.Argument(metavar="JOB | KIND:JOB:ID", show_default=False)]


@_command
def pause(ctx: typer.Context, target: TargetArgument) -> None:
    """Pause a job (every instance, new ones too) or one instance: no alarm step runs
    until resume; alarms and stored events are kept, client calls still work."""
    with _admin(ctx) as admin:
        typer.echo(admin.pause(target).message)


@_command
def resume(ctx: typer.Context, target: TargetArgument) -> None:
    """Resume a paused job or instance: what it missed is due now (catch-up rules)."""
    with _admin(ctx) as admin:
        typer.echo(admin.resume(target).message)


@_command
def trigger(ctx: typer.Context, instance: IdArgument) -> None:
    """Make a Continuous/Task run due now; the daemon runs it."""
    with _admin(ctx) as admin:
        typer.echo(admin.trigger(_instance_id(instance)).message)


@_command
def flush(ctx: typer.Context, instance: IdArgument) -> None:
    """Make a Debounce batch's flush due now; the daemon runs it."""
    with _admin(ctx) as admin:
        typer.echo(admin.flush(_instance_id(instance)).message)


@_command
def clear(ctx: typer.Context, instance: IdArgument) -> None:
    """Discard a Debounce batch without running execute."""
    with _admin(ctx) as admin:
        typer.echo(admin.clear(_instance_id(instance)).message)


@_command
def retry(ctx: typer.Context, instance: IdArgument) -> None:
    """Resume a parked (failed) instance; the daemon runs it."""
    with _admin(ctx) as admin:
        typer.echo(admin.retry(_instance_id(instance)).message)


# -- copying a database ---------------------------------------------------------------------


@_command
def copy(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="A file path or a URL.")],
    dest: Annotated[str, typer.Argument(metavar="DEST", help="A new file or an empty database.")],
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress on stderr (default: on a TTY)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rows read per batch.")] = 5000,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Copy a whole database (SQLite or PostgreSQL) into an empty one; counts are checked."""
    from .copy import Progress, copy_database

    show = sys.stderr.isatty() if progress is None else progress
    reporter = Progress() if show else None
    try:
        result = copy_database(source, dest, batch_size=batch_size, progress=reporter)
    finally:
        if reporter is not None:
            reporter.finish()
    if as_json:
        _print_json(result.to_dict())
    else:
        typer.echo(result.summary())


# -- the dashboard --------------------------------------------------------------------------


@_command
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(metavar="HOST", help="Address to bind (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(metavar="PORT", min=0, max=65535, help="Port (0: any free one).")
    ] = 8080,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Hide the actions; refuse every POST.")
    ] = False,
    password_file: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="HTTP Basic users, one user:password per line."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without a password.")
    ] = False,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="Also answer requests for this host name (repeatable); others get 400.",
        ),
    ] = None,
) -> None:
    """Serve the web dashboard (needs 'durajobs[web]'); Ctrl-C or SIGTERM stops it."""
    try:
        from .web.serve import serve as run
    except ImportError as exc:  # jinja2 or waitress missing
        _fail(f"the dashboard needs: pip install 'durajobs[web]' ({exc})", EXIT_FAILED)
    run(
        _db(ctx), host=host, port=port, read_only=read_only, password_file=password_file,
        insecure=insecure, allow_hosts=allow_host or (),
    )  # fmt: skip


from .check import register as _register_check  # noqa: E402  (durajobs check --app ...)

_register_check(app)


def main(argv: Sequence[str] | None = None) -> int:
    """The console-script entry point; returns the exit code.

    Raises:
        SystemExit: never (the code is returned) except from ``sys.exit`` in the script shim.
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    for position, arg in enumerate(args, 1):
        # Bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape): no id,
        # job name, reason or database path durajobs stores or opens can hold them.
        bad = next((i for i, char in enumerate(arg) if "\ud800" <= char <= "\udfff"), None)
        if bad is not None:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            sys.stderr.write(
                f"durajobs: error: argument {position} ('{shown}') is not valid UTF-8 text; "
                "use UTF-8 (check the terminal's encoding, e.g. LANG=C.UTF-8)\n"
            )
            return EXIT_USAGE
    _typer_values.install()  # typer >= 0.29: option values without pydantic (fast start-up)
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="durajobs")
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_FAILED)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
