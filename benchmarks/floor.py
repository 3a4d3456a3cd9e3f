"""The raw apsw floor: what one SQLite file on this disk can do with no library in the way.

Theory of operation: a durable-job step is, at its core, a read-modify-write of one row of
JSON state in one write transaction. This script measures exactly that with apsw, WAL mode,
and nothing else, so durajobs' figures can be stated as ratios of it measured in the same run:

(a) single: ``BEGIN IMMEDIATE; SELECT state; json.loads; modify; json.dumps; UPDATE; COMMIT``
    per transaction, with ``synchronous=FULL`` and ``synchronous=NORMAL``;
(b) batch: 100 such read-modify-writes in one transaction, ``synchronous=FULL``;
(c) batch of plain writes: 100 ``UPDATE``s (new bytes, no SELECT, no JSON parsing) in one
    transaction, ``synchronous=FULL`` -- the shape of the reference figure "100 updates per
    transaction ~310,000 rows/s", which the read-modify-write batch cannot reach because
    SELECT + json.loads + json.dumps cost ~6 us per row in Python on their own.

Every UPDATE stores different bytes (a counter and a timestamp change), because SQLite writes
nothing for an UPDATE that stores identical bytes; the run checks the counters afterwards.
Databases live in a temporary directory under ``benchmarks/out/`` (same file system as the
repository, not tmpfs) which is deleted afterwards.

Run alone: ``python benchmarks/floor.py [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import apsw
from common import fs_type, percentile, run_bounded, workdir

ROWS = 1_000  # instances in the table; transactions cycle through them
BATCH = 100


@dataclasses.dataclass(frozen=True)
class FloorRun:
    """One floor measurement."""

    name: str
    synchronous: str
    rows_per_txn: int
    txns: int
    elapsed: float
    file_system: str
    txn_p50_s: float  # per-transaction wall time percentiles: fsync spikes show here
    txn_p99_s: float
    txn_max_s: float

    @property
    def txn_per_s(self) -> float:
        return self.txns / self.elapsed

    @property
    def rows_per_s(self) -> float:
        return self.txns * self.rows_per_txn / self.elapsed


def _open(path: Path, synchronous: str) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.setbusytimeout(5_000)
    # One statement per execute: apsw runs later statements only when the cursor is iterated.
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"could not switch {path} to WAL (got {mode})")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    got = conn.execute("PRAGMA synchronous").fetchone()[0]
    expected = {"FULL": 2, "NORMAL": 1}[synchronous]
    if got != expected:
        raise RuntimeError(f"synchronous is {got}, expected {expected}")
    return conn


def _create(conn: apsw.Connection) -> None:
    conn.execute("CREATE TABLE instance (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
    conn.execute("BEGIN IMMEDIATE")
    for rowid in range(ROWS):
        state = {
            "access_token": f"at-{rowid:06d}",
            "refresh_token": f"rt-{rowid:06d}",
            "expires_at": 0.0,
            "run_count": 0,
        }
        conn.execute("INSERT INTO instance (id, state) VALUES (?, ?)", (rowid, json.dumps(state)))
    conn.execute("COMMIT")


def _read_modify_write(cursor: apsw.Cursor, rowid: int) -> None:
    (raw,) = cursor.execute("SELECT state FROM instance WHERE id = ?", (rowid,)).fetchone()
    state = json.loads(raw)
    state["run_count"] += 1
    state["expires_at"] = time.time()
    cursor.execute("UPDATE instance SET state = ? WHERE id = ?", (json.dumps(state), rowid))


def _blind_write(cursor: apsw.Cursor, rowid: int, run_counts: list[int]) -> None:
    # New bytes every time (counter and timestamp), built without a read or a JSON parse.
    run_counts[rowid] += 1
    state = (
        f'{{"access_token": "at-{rowid:06d}", "refresh_token": "rt-{rowid:06d}", '
        f'"expires_at": {time.time()!r}, "run_count": {run_counts[rowid]}}}'
    )
    cursor.execute("UPDATE instance SET state = ? WHERE id = ?", (state, rowid))


def _total_runs(conn: apsw.Connection) -> int:
    return sum(
        json.loads(raw)["run_count"] for (raw,) in conn.execute("SELECT state FROM instance")
    )


def measure(
    db_path: Path,
    *,
    synchronous: str,
    rows_per_txn: int,
    max_seconds: float,
    read: bool = True,
    max_txns: int = 10_000_000,
    warmup_txns: int = 50,
) -> FloorRun:
    """Run transactions of ``rows_per_txn`` row writes each on a fresh database.

    ``read=True``: each write is SELECT + json.loads + modify + json.dumps + UPDATE;
    ``read=False``: each write is one UPDATE of new bytes.
    """
    conn = _open(db_path, synchronous)
    try:
        _create(conn)
        cursor = conn.cursor()
        next_row = 0
        run_counts = [0] * ROWS
        durations: list[float] = []
        clock = time.perf_counter

        def transaction(_: int) -> None:
            nonlocal next_row
            started = clock()
            cursor.execute("BEGIN IMMEDIATE")
            for _row in range(rows_per_txn):
                if read:
                    _read_modify_write(cursor, next_row)
                else:
                    _blind_write(cursor, next_row, run_counts)
                next_row = (next_row + 1) % ROWS
            cursor.execute("COMMIT")
            durations.append(clock() - started)

        run_bounded(transaction, max_ops=warmup_txns, max_seconds=max_seconds)
        warm = _total_runs(conn)
        durations.clear()
        txns, elapsed = run_bounded(transaction, max_ops=max_txns, max_seconds=max_seconds)
        # The rows really changed: every counter increment is in the table.
        changed = _total_runs(conn) - warm
        if changed != txns * rows_per_txn:
            raise RuntimeError(f"expected {txns * rows_per_txn} row updates, found {changed}")
    finally:
        conn.close()
    return FloorRun(
        name=f"raw apsw {rows_per_txn} {'rmw' if read else 'update'}/txn {synchronous}",
        synchronous=synchronous,
        rows_per_txn=rows_per_txn,
        txns=txns,
        elapsed=elapsed,
        file_system=fs_type(db_path.parent),
        txn_p50_s=percentile(durations, 50),
        txn_p99_s=percentile(durations, 99),
        txn_max_s=max(durations),
    )


def run_floor(*, quick: bool, base: Path | None = None) -> dict[str, FloorRun]:
    """All floor measurements.

    Keys: ``single_full``, ``single_normal`` (1 read-modify-write per txn), ``batch_full``
    (100 read-modify-writes per txn), ``batch_update_full`` (100 plain UPDATEs per txn).
    """
    seconds = 1.2 if quick else 6.0
    results: dict[str, FloorRun] = {}
    with workdir("floor") as tmp:
        where = base or tmp
        plan = [
            ("single_full", "FULL", 1, True),
            ("single_normal", "NORMAL", 1, True),
            ("batch_full", "FULL", BATCH, True),
            ("batch_update_full", "FULL", BATCH, False),
        ]
        for key, synchronous, rows_per_txn, read in plan:
            results[key] = measure(
                where / f"floor-{key}.db",
                synchronous=synchronous,
                rows_per_txn=rows_per_txn,
                read=read,
                max_seconds=seconds,
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for key, run in run_floor(quick=args.quick).items():
        print(
            f"{key:18s} {run.txn_per_s:>10,.0f} txn/s {run.rows_per_s:>10,.0f} rows/s "
            f"txn p50/p99/max {run.txn_p50_s * 1e3:.3f}/{run.txn_p99_s * 1e3:.3f}/"
            f"{run.txn_max_s * 1e3:.1f} ms ({run.txns} txns in {run.elapsed:.2f} s "
            f"on {run.file_system})"
        )


if __name__ == "__main__":
    main()
