"""``durajobs check``: would this code read every stored state and queued event? (before a deploy)

``durajobs check --app myapp.jobs:jobs [--db LOCATION] [--json]`` imports the application (as
the daemon does: ``durajobs.apploader.load_app``), then reads every stored state and every
queued Debounce event of the database against the application's *current* definitions, the
way a step would (``codec.upgrade`` runs the ``migrate`` chain from the stored version, then the
result is decoded), and writes nothing: migrations run on copies, the store is opened
read-only, all from one consistent snapshot (``CopyStore.export``).

Writing nothing includes the import: the application's module makes its ``Jobs`` at import,
and a ``Jobs`` opens (creates, migrates) its database when it is made. ``check`` imports it
under ``durajobs.jobs.definitions_only()``, where ``Jobs(...)`` keeps its definitions and
opens nothing, so a check run with the new code before a deploy leaves the database the old
daemons serve at its schema (a missing SQLite file stays missing). The database is read at
its own schema when that is older than this code's but still readable
(``stores.sql.READABLE_SCHEMA``; the report names the schema it read); an older one is
exit 4, as for the other commands.

Per job it counts the objects that read as they are, those that need a migration (and pass it),
and those that fail, with the first few instance ids and reasons; it lists the instances (and
queued events) of jobs the code no longer defines, which no step of this code will run. Exit
codes: 0 when nothing fails, 1 when something would fail to read (orphaned instances are
reported, not counted as failures: nothing of them is read or lost), 2 for a bad ``--app``,
4 when the database cannot be read (as the other commands).

The location: ``--db`` of the command, else the CLI's own ``--db`` / ``DURAJOBS_DB`` when given,
else the location the application's ``Jobs`` was made with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import attrs
import typer

from .errors import DurajobsError, StorageError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .core.codec import TypeCodec
    from .core.definitions import Definition

# The codec (cattrs) and the engine are imported when the command runs: the CLI's other
# commands start without them (tests/test_layering.py).

__all__ = ["CheckReport", "JobCheck", "check_database", "register"]

EXAMPLES = 5  # failures shown per job
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORAGE = 0, 1, 2, 4


@attrs.define
class Counts:
    """How the stored objects of one kind (states, or queued events) of a job read."""

    as_is: int = 0
    migrated: int = 0  # read after the migrate chain
    failed: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"as_is": self.as_is, "migrated": self.migrated, "failed": self.failed}


@attrs.define
class JobCheck:
    """One job of the application: its definition's version and how its stored objects read."""

    job: str
    kind: str
    version: int
    states: Counts = attrs.Factory(Counts)
    events: Counts = attrs.Factory(Counts)
    failures: list[tuple[str, str]] = attrs.Factory(list)  # (instance id, reason), the first few
    stored_versions: dict[int, int] = attrs.Factory(dict)  # version -> states and events

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "kind": self.kind,
            "version": self.version,
            "stored_versions": {str(v): n for v, n in sorted(self.stored_versions.items())},
            "states": self.states.to_dict(),
            "events": self.events.to_dict(),
            "failures": [{"instance_id": i, "reason": r} for i, r in self.failures],
        }


@attrs.define
class Orphan:
    """Instances (and queued events) of a job the application does not define."""

    job: str
    kind: str
    instances: int = 0
    events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class CheckReport:
    """What ``check_database`` found; ``ok`` when nothing would fail to read."""

    location: str
    schema: int  # the schema version of the database read
    jobs: list[JobCheck]
    orphans: list[Orphan]

    @property
    def failed(self) -> int:
        return sum(j.states.failed + j.events.failed for j in self.jobs)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "location": self.location,
            "schema": self.schema,
            "failed": self.failed,
            "jobs": [j.to_dict() for j in self.jobs],
            "orphans": [o.to_dict() for o in self.orphans],
        }

    def lines(self) -> Iterator[str]:
        """The report for people."""
        for job in self.jobs:
            s, e = job.states, job.events
            events = (
                f"; queued events: {e.as_is} as they are, {e.migrated} migrated, {e.failed} fail"
                if job.kind == "debounce"
                else ""
            )
            yield (
                f"{job.job} ({job.kind}, version {job.version}): states: {s.as_is} as they "
                f"are, {s.migrated} migrated, {s.failed} fail{events}"
            )
            for instance_id, reason in job.failures:
                yield f"  FAIL {instance_id}: {reason}"
            more = s.failed + e.failed - len(job.failures)
            if more > 0:
                yield f"  ... and {more} more"
        for orphan in self.orphans:
            yield (
                f"{orphan.job} ({orphan.kind}): not defined by the application: "
                f"{orphan.instances} instances, {orphan.events} queued events (no step of this "
                "code runs them; `durajobs terminate` ends them)"
            )
        where = f"{self.location}, schema version {self.schema}"
        yield (
            f"ok: every stored state and queued event reads ({where})"
            if self.ok
            else f"FAILED: {self.failed} stored objects cannot be read by this code "
            f"({where}); give the job a new version= with a migrate= step"
        )


def check_database(registry: Mapping[str, Definition], location: str) -> CheckReport:
    """Read every stored state and queued event at ``location`` against ``registry``.

    Nothing is written: the store is opened read-only (a schema older than this code's but
    still readable is read as it is: ``CheckReport.schema``), migrations run on copies.

    Raises:
        StorageError: the database cannot be read, or its schema is newer than this code's or
            too old for its reads.
        TypeError: a state or event type of the registry cannot be stored.
    """
    from .admin import orphaned_jobs
    from .core.codec import upgrade
    from .core.rows import Instance
    from .engine import check_types  # the codecs Jobs() builds
    from .stores import display_location, open_store

    codecs = check_types(registry)
    checks = {
        name: JobCheck(name, job.kind, job.version)
        for name, job in sorted(registry.items())
    }  # fmt: skip
    stored_instances: dict[tuple[str, str], int] = {}  # (kind, job) -> instances, every job
    stored_events: dict[tuple[str, str], int] = {}

    def read(
        name: str, kind: str, instance_id: str, text: str | None, stored: int, event: bool
    ) -> None:
        tally = stored_events if event else stored_instances
        tally[(kind, name)] = tally.get((kind, name), 0) + 1
        job = registry.get(name)
        if job is None or job.kind != kind:
            return  # an orphaned job's: no step of this code reads it
        check = checks[name]
        counts = check.events if event else check.states
        if text is not None:
            check.stored_versions[stored] = check.stored_versions.get(stored, 0) + 1
        codec: TypeCodec | None = codecs[name][1 if event else 0]
        what = (
            f"{'a queued event' if event else 'state'} of {instance_id} (job {name!r}, "
            f"stored version {stored})"
        )
        if text is None:  # no state yet: nothing to read
            counts.as_is += 1
            return
        try:
            assert codec is not None
            codec.decode(upgrade(text, stored, job.version, job.migrate, what), what)
        except ValidationError as exc:
            counts.failed += 1
            if len(check.failures) < EXAMPLES:
                check.failures.append((instance_id, str(exc)))
            return
        if stored == job.version:
            counts.as_is += 1
        else:
            counts.migrated += 1

    store = open_store(location, readonly=True)
    try:
        schema = store.schema_version()
        batches = store.export(batch_size=2000)
        try:
            for batch in batches:
                if batch.table == "instances":
                    for row in batch.rows:
                        inst = Instance(*row)
                        read(inst.job, inst.kind, inst.instance_id, inst.state, inst.version,
                             event=False)  # fmt: skip
                elif batch.table == "inbox":
                    for _seq, instance_id, text, _added_at, version in batch.rows:
                        kind, _, rest = str(instance_id).partition(":")
                        name = rest.partition(":")[0]
                        read(name, kind, instance_id, text, version, event=True)
                else:
                    break  # keys and history hold no state
        finally:
            batches.close()
    finally:
        store.close()
    defined = {name: job.kind for name, job in registry.items()}
    orphans = orphaned_jobs(((k, j, n) for (k, j), n in stored_instances.items()), defined)
    return CheckReport(
        display_location(location), schema, list(checks.values()),
        [Orphan(job, kind, n, stored_events.get((kind, job), 0))
         for (kind, job), n in orphans.items()],
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the ``check`` command to the ``durajobs`` CLI."""

    @app.command()
    def check(
        ctx: typer.Context,
        app_spec: Annotated[
            str,
            typer.Option(
                "--app", metavar="MODULE:ATTR",
                help="The application's durajobs.Jobs, e.g. myapp.jobs:jobs (as the daemon's).",
            ),
        ],
        db: Annotated[
            str | None,
            typer.Option(
                "--db", metavar="LOCATION",
                help="The database (default: durajobs --db / DURAJOBS_DB, else the app's own).",
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    ) -> None:  # fmt: skip
        """Would this code read every stored state and queued event? Writes nothing; exit 1
        if anything would fail (run it before a deploy)."""
        report = _run(ctx, app_spec, db)
        if as_json:
            import json

            typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        else:
            for line in report.lines():
                typer.echo(line)
        raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILED)


def _run(ctx: typer.Context, app_spec: str, db: str | None) -> CheckReport:
    """Load the application (its ``Jobs`` opening nothing), pick the location, check it;
    errors become one line and a code."""
    from .apploader import AppError, load_app

    try:
        application = load_app(app_spec, definitions_only=True)
    except AppError as exc:
        _fail(str(exc), EXIT_USAGE)
    try:
        root = ctx.find_root()
        source = root.get_parameter_source("db")  # given, or the CLI's default file?
        given = source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
        if db is None and given and isinstance(root.obj, dict):
            db = str(root.obj["db"])
        return check_database(application.registry, db or application.location)
    except StorageError as exc:
        _fail(str(exc), EXIT_STORAGE)
    except DurajobsError as exc:
        _fail(str(exc), EXIT_FAILED)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"durajobs: error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)
