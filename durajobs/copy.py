"""``durajobs copy SOURCE DEST``: copy a whole database from any store to any store.

SQLite -> PostgreSQL is how a user outgrows one machine; SQLite -> SQLite is an online backup
while the daemon runs; PostgreSQL -> SQLite works too. The stores do the work
(``Store.export`` reads one consistent snapshot of the source in batches; ``import_batches``
writes them into the empty destination in one transaction and checks the counts inside it);
this module opens both ends, refuses what must be refused, reports progress, and checks the
counts once more against the snapshot's.

Everything is copied as stored: instances with their state, alarms, counters and status,
queued Debounce events, idempotency keys and history, with history ids and queue seqs kept.
Alarms keep their absolute times: a daemon started on the destination fires what is due.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

import attrs

from durajobs.errors import InvalidStateError, StorageError
from durajobs.stores import (
    display_location,
    new_database_files,
    open_store,
    refuse_directory,
    same_database,
)
from durajobs.stores.base import TABLES, ExportBatch, Store, not_empty_error

__all__ = ["CopyResult", "Progress", "copy_database"]

BATCH_SIZE = 5000
TABLE_NAMES = {
    "instances": "instances",
    "inbox": "queued events",
    "event_keys": "idempotency keys",
    "history": "history records",
    "paused": "paused jobs and instances",
}


@attrs.frozen
class CopyResult:
    """What a copy did: ``counts`` per table (as in the source snapshot and the destination)."""

    source: str  # display locations: never a password
    destination: str
    counts: dict[str, int]
    seconds: float

    @property
    def rows(self) -> int:
        """All rows copied."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """``copied 3 instances, 1 queued events, ... from A to B in 0.1 s``."""
        parts = ", ".join(f"{self.counts.get(t, 0)} {TABLE_NAMES[t]}" for t in TABLES)
        return (
            f"copied {parts} from {self.source} to {self.destination} in {self.seconds:.1f} s "
            "(counts checked)"
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (``durajobs copy --json``)."""
        return {
            "source": self.source, "destination": self.destination,
            "counts": dict(self.counts), "rows": self.rows, "seconds": round(self.seconds, 3),
        }  # fmt: skip


class Progress:
    """Progress on a stream (stderr): ``copying: 12000/50000 rows (24%) history``.

    On a terminal one line is rewritten in place; elsewhere one line per report. Reports at
    most every ``interval`` seconds, and once at the end.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self._tty = self.stream.isatty()
        self._last = float("-inf")
        self._shown = False

    def __call__(self, done: int, total: int, table: str) -> None:
        """Report ``done`` of ``total`` rows, now in ``table``."""
        now = time.monotonic()
        if now - self._last < self.interval and done < total:
            return
        self._last = now
        percent = 100 * done // total if total else 100
        line = f"copying: {done}/{total} rows ({percent}%) {TABLE_NAMES.get(table, table)}"
        if self._tty:
            self.stream.write("\r" + line.ljust(72))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        """End the rewritten line (terminal only)."""
        if self._tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def copy_database(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[int, int, str], None] | None = None,
) -> CopyResult:
    """Copy every instance, queued event, idempotency key and history record.

    Args:
        source: a SQLite path or a PostgreSQL URL; opened read-only (never created).
        destination: a SQLite path (created if missing) or a PostgreSQL URL of an existing,
            empty database (the schema is created). It must hold no durajobs rows.
        batch_size: rows per batch read from the source.
        progress: called after each batch with ``(rows done, rows in total, table)``.

    Returns:
        The counts copied (checked: the destination holds exactly the snapshot's rows).

    Raises:
        InvalidStateError: the destination is not empty, or is the source itself.
        StorageError: either end cannot be opened, read or written (a SQLite destination
            file this call created is removed again; a PostgreSQL destination is left empty).
        ValueError: ``batch_size`` is less than 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    source, destination = os.fspath(source), os.fspath(destination)
    shown_source, shown_destination = display_location(source), display_location(destination)
    if same_database(source, destination):
        raise InvalidStateError(f"{shown_destination}: the destination is the source itself")
    refuse_directory(destination)
    started = time.monotonic()
    created = new_database_files(destination)  # removed again if the copy fails
    with contextlib.ExitStack() as stack:
        src: Store = open_store(source, readonly=True)
        stack.callback(src.close)
        try:
            dst: Store = open_store(destination)
        except BaseException:
            _remove(created)
            raise
        try:
            with contextlib.closing(dst):
                counts = _copy(src, dst, batch_size, progress)
        except BaseException:
            _remove(created)
            raise
    return CopyResult(shown_source, shown_destination, counts, time.monotonic() - started)


def _copy(
    src: Store, dst: Store, batch_size: int, progress: Callable[[int, int, str], None] | None
) -> dict[str, int]:
    held = dst.table_counts()
    if any(held.values()):  # refused early, before reading the source; and again, atomically
        raise not_empty_error(dst.path, held)
    snapshot: dict[str, int] = {}
    done = [0]

    def reported(batches: Iterator[ExportBatch]) -> Iterator[ExportBatch]:
        for batch in batches:
            snapshot.update(batch.counts)
            done[0] += len(batch.rows)
            if progress is not None:
                progress(done[0], sum(batch.counts.values()), batch.table)
            yield batch

    with contextlib.closing(src.export(batch_size)) as batches:
        stored = dst.import_batches(reported(batches))
    if not snapshot:  # an empty source yields no batch: every table had 0 rows
        snapshot = dict.fromkeys(TABLES, 0)
    if any(stored.get(t, 0) != snapshot.get(t, 0) for t in TABLES):
        raise StorageError(  # import_batches checked inside its transaction; belt and braces
            f"{dst.path}: copied counts {stored} differ from the source's {snapshot}"
        )
    return {t: stored[t] for t in TABLES}


def _remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
