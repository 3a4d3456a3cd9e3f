"""Self-tests of the fault-injecting VFS in ``faultvfs.py`` (plain apsw, no durajobs)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator

import apsw
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faultvfs import FaultVFS


@pytest.fixture
def workdir(tmp_path) -> Iterator[str]:
    """A scratch directory on tmpfs when there is one (fast), else pytest's tmp_path."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        d = tempfile.mkdtemp(prefix="faultvfs-", dir="/dev/shm")
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:
        yield str(tmp_path)


@pytest.fixture
def vfs() -> Iterator[FaultVFS]:
    v = FaultVFS(f"faultvfs-test-{uuid.uuid4().hex[:8]}")
    yield v
    v.unregister()


# generate_series(?, ?) is not compiled into apsw's SQLite.
SERIES = (
    "(with recursive s(value) as (select ?1 union all select value + 1 from s where value < ?2)"
    " select value from s)"
)


def connect(
    vfs: FaultVFS, path: str, *, journal: str = "wal", sync: str = "full"
) -> apsw.Connection:
    db = apsw.Connection(path, vfs=vfs.vfs_name)
    db.execute(f"pragma journal_mode={journal}").fetchall()
    db.execute(f"pragma synchronous={sync}")
    return db


def rows(path: str) -> list[int]:
    """Open an image with the plain default VFS; check integrity; return t's values."""
    db = apsw.Connection(path)
    try:
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
        if not db.execute("select 1 from sqlite_master where name='t'").fetchall():
            return []
        return [r[0] for r in db.execute("select x from t order by x")]
    finally:
        db.close()


def image_dir(workdir: str, tag: object) -> str:
    return os.path.join(workdir, f"img-{tag}")


# -- pass-through -------------------------------------------------------------------------


def test_wal_works_through_the_shim_and_calls_are_counted(vfs, workdir):
    path = os.path.join(workdir, "a.db")
    db = connect(vfs, path)
    assert db.execute("pragma journal_mode").fetchall() == [("wal",)]
    db.execute("create table t(x integer primary key)")
    for i in range(10):
        db.execute("insert into t values(?)", (i,))
    assert os.path.exists(path + "-wal")
    assert os.path.exists(path + "-shm")  # the xShm* methods are inherited from C
    assert vfs.writes > 0
    assert vfs.syncs >= 10  # synchronous=FULL syncs the WAL at every commit
    assert vfs.io_calls == vfs.writes + vfs.syncs + vfs.truncates
    assert vfs.counts() == {"write": vfs.writes, "sync": vfs.syncs, "truncate": vfs.truncates}
    # A second connection (through the default VFS) sees the data: the real files are written.
    other = apsw.Connection(path)
    assert [r[0] for r in other.execute("select x from t")] == list(range(10))
    other.close()
    db.close()


# -- fault injection ----------------------------------------------------------------------


def big_transaction(db: apsw.Connection) -> None:
    db.execute("begin immediate")
    db.execute(f"insert into t select value, randomblob(3000) from {SERIES}", (1, 20))
    db.execute("commit")


@pytest.mark.parametrize(
    ("error", "exc_type", "code", "extended"),
    [
        ("ioerr", apsw.IOError, apsw.SQLITE_IOERR, apsw.SQLITE_IOERR_WRITE),
        ("full", apsw.FullError, apsw.SQLITE_FULL, apsw.SQLITE_FULL),
    ],
)
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_nth_write_fails_and_the_transaction_rolls_back(
    vfs, workdir, error, exc_type, code, extended, journal
):
    db = connect(vfs, os.path.join(workdir, "a.db"), journal=journal)
    db.execute("create table t(x integer primary key, pad blob)")
    db.execute("insert into t values(0, randomblob(100))")
    before = vfs.writes
    fault = vfs.fail_after(2, kind="write", error=error)
    with pytest.raises(exc_type) as info:
        big_transaction(db)
    assert info.value.result == code
    assert info.value.extendedresult == extended
    assert "faultvfs" in str(info.value)
    assert vfs.writes - before == 3  # the (n+1)-th write from now failed
    assert vfs.faults_fired == 1
    assert fault.fired == 1
    assert not vfs.armed  # a one-shot fault disarms itself
    if not db.get_autocommit():  # an error at COMMIT can leave the transaction open
        db.execute("rollback")
    assert db.get_autocommit()
    assert [r[0] for r in db.execute("select x from t")] == [0]
    # The connection keeps working once the fault has fired.
    db.execute("insert into t values(1, x'00')")
    assert [r[0] for r in db.execute("select x from t")] == [0, 1]
    assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
    db.close()


def test_sync_fault_on_commit(vfs, workdir):
    db = connect(vfs, os.path.join(workdir, "a.db"))
    db.execute("create table t(x)")
    vfs.fail_after(0, kind="sync")
    with pytest.raises(apsw.IOError) as info:
        db.execute("insert into t values(1)")
    assert info.value.extendedresult == apsw.SQLITE_IOERR_FSYNC
    assert db.get_autocommit()
    assert db.execute("select count(*) from t").fetchall() == [(0,)]
    db.execute("insert into t values(2)")
    assert db.execute("select x from t").fetchall() == [(2,)]
    db.close()


def test_truncate_fault_on_checkpoint(vfs, workdir):
    db = connect(vfs, os.path.join(workdir, "a.db"))
    db.execute("create table t(x)")
    db.execute("insert into t values(1)")
    vfs.fail_after(0, kind="truncate", error="full")
    with pytest.raises(apsw.FullError):
        db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    assert vfs.faults_fired == 1
    db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    assert os.path.getsize(db.filename + "-wal") == 0
    assert db.execute("select x from t").fetchall() == [(1,)]
    db.close()


def test_file_filter_only_counts_matching_files(vfs, workdir):
    db = connect(vfs, os.path.join(workdir, "a.db"))
    db.execute("create table t(x)")
    vfs.fail_after(0, kind="write", file="db")  # WAL mode: commits write only the WAL
    for i in range(5):
        db.execute("insert into t values(?)", (i,))
    assert vfs.faults_fired == 0
    with pytest.raises(apsw.IOError):
        db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)  # copies pages into the db
    assert vfs.faults_fired == 1
    assert vfs.last_fault == ("write", "ioerr", db.filename)
    db.close()


def test_persistent_faults_keep_failing_until_cleared(vfs, workdir):
    path = os.path.join(workdir, "a.db")
    db = connect(vfs, path)
    db.execute("create table t(x)")
    db.execute("insert into t values(0)")
    vfs.fail_after(0, persistent=True)
    for i in range(1, 4):
        with pytest.raises(apsw.IOError):
            db.execute("insert into t values(?)", (i,))
        assert db.get_autocommit()
    fired = vfs.faults_fired
    assert fired >= 3
    assert vfs.armed
    vfs.clear_faults()
    assert not vfs.armed
    db.execute("insert into t values(10)")
    assert vfs.faults_fired == fired
    assert [r[0] for r in db.execute("select x from t order by x")] == [0, 10]
    assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
    db.close()
    assert rows(path) == [0, 10]


def test_several_faults_count_independently(vfs, workdir):
    db = connect(vfs, os.path.join(workdir, "a.db"))
    db.execute("create table t(x)")
    a = vfs.fail_after(5, kind="sync")
    b = vfs.fail_after(1, kind="sync")
    db.execute("insert into t values(1)")  # one WAL sync per commit: b counts down
    with pytest.raises(apsw.IOError):
        db.execute("insert into t values(2)")
    assert (a.fired, b.fired) == (0, 1)
    assert a.remaining == 3  # the call that fired b was a matching call for a too
    vfs.clear_faults()
    db.close()


def test_fail_after_validates_arguments(vfs):
    with pytest.raises(ValueError):
        vfs.fail_after(-1)
    with pytest.raises(ValueError):
        vfs.fail_after(0, kind="read")
    with pytest.raises(ValueError):
        vfs.fail_after(0, error="busy")
    with pytest.raises(ValueError):
        vfs.fail_after(0, file="shm")


def test_reset_clears_counters_faults_and_logs(vfs, workdir):
    db = connect(vfs, os.path.join(workdir, "a.db"), sync="normal")
    db.execute("create table t(x)")
    db.execute("insert into t values(1)")
    vfs.fail_after(100, persistent=True)
    assert vfs.io_calls > 0
    assert vfs.unsynced_ops() > 0
    vfs.reset()
    assert (vfs.io_calls, vfs.faults_fired, vfs.unsynced_ops()) == (0, 0, 0)
    assert not vfs.armed
    # After reset everything written so far counts as durable.
    assert rows(vfs.crash_image(image_dir(workdir, "r"), "none")) == [1]
    db.close()


def test_skip_sync_false_calls_the_real_fsync(workdir):
    v = FaultVFS(f"faultvfs-test-{uuid.uuid4().hex[:8]}", skip_sync=False)
    try:
        db = connect(v, os.path.join(workdir, "a.db"))
        db.execute("create table t(x)")
        db.execute("insert into t values(1)")
        assert v.syncs > 0
        assert v.unsynced_ops() == 0
        db.close()
    finally:
        v.unregister()


# -- power loss ---------------------------------------------------------------------------


def test_normal_loses_the_unsynced_commit_but_stays_consistent(vfs, workdir):
    path = os.path.join(workdir, "a.db")
    db = connect(vfs, path, sync="normal")
    db.execute("create table t(x integer primary key)")
    db.execute("insert into t values(0)")
    db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)  # syncs the db: 0 is durable
    assert vfs.unsynced_ops(path) == 0
    assert vfs.unsynced_ops(path + "-wal") <= 1  # the WAL's truncation is not synced
    db.execute("insert into t values(1)")  # NORMAL: the WAL is not synced at commit
    assert vfs.unsynced_ops() > 0
    img = vfs.crash_image(image_dir(workdir, "none"), "none")
    assert rows(img) == [0]
    assert vfs.last_crash.kept == 0
    assert vfs.last_crash.dropped > 0
    assert rows(vfs.crash_image(image_dir(workdir, "all"), "all")) == [0, 1]
    # The live connection is untouched by taking images.
    db.execute("insert into t values(2)")
    assert [r[0] for r in db.execute("select x from t")] == [0, 1, 2]
    db.close()


def test_full_wal_keeps_every_commit_with_keep_none(vfs, workdir):
    db = connect(vfs, os.path.join(workdir, "a.db"))
    db.execute("create table t(x integer primary key)")
    for i in range(20):
        db.execute("insert into t values(?)", (i,))
    img = vfs.crash_image(image_dir(workdir, "none"), "none")
    assert os.path.getsize(img + "-wal") > 0  # the commits are in the WAL only
    assert not os.path.exists(img + "-shm")  # not durable, never copied
    assert rows(img) == list(range(20))
    db.close()


def test_keep_all_keeps_everything(vfs, workdir):
    db = connect(vfs, os.path.join(workdir, "a.db"), sync="off")
    db.execute("create table t(x integer primary key)")
    for i in range(20):
        db.execute("insert into t values(?)", (i,))
    assert vfs.unsynced_ops() > 0  # synchronous=OFF: the commits were never synced
    assert rows(vfs.crash_image(image_dir(workdir, "all"), "all")) == list(range(20))
    db.close()


@pytest.mark.parametrize("journal", ["wal", "delete", "truncate"])
@pytest.mark.parametrize("sync", ["full", "normal"])
def test_keep_random_is_consistent_and_full_is_durable(vfs, workdir, journal, sync):
    if journal != "wal" and sync == "normal":
        # Rollback journals with synchronous=NORMAL may corrupt on power loss (SQLite docs).
        pytest.skip("not a configuration SQLite promises to survive")
    db = connect(vfs, os.path.join(workdir, "a.db"), journal=journal, sync=sync)
    db.execute("pragma wal_autocheckpoint=20")  # exercise checkpoints and WAL restarts
    db.execute("pragma cache_size=5")  # spill dirty pages before commit
    db.execute("create table t(x integer primary key, pad blob)")
    if journal == "wal":
        db.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    for seed in range(60):
        db.execute("insert into t values(?, randomblob(?))", (seed, 50 + 700 * (seed % 5)))
        committed = seed + 1
        if seed % 7 == 3:  # also crash inside an open, spilled transaction
            db.execute("begin")
            db.execute(
                f"insert into t select 100000 + value, randomblob(2000) from {SERIES}", (1, 30)
            )
        img = vfs.crash_image(image_dir(workdir, seed % 3), "random", random.Random(seed))
        got = rows(img)
        assert all(x < 100000 for x in got)  # no row of the open transaction survives
        assert got == list(range(len(got)))  # a prefix of the commits, in order
        if sync == "full":
            assert len(got) == committed
        if not db.get_autocommit():
            db.execute("rollback")
    db.close()


def crash_at_every_io_point(
    vfs: FaultVFS,
    workdir: str,
    workload: Callable[[apsw.Connection, list[int]], None],
    *,
    journal: str,
    sync: str,
    keep: str,
) -> tuple[int, int]:
    """Run ``workload`` once to count its I/O calls, then once per call with the "power"
    cut at that call (every later write/sync/truncate fails), and check the crash image:
    consistent, a prefix of the commits, and with FULL every acknowledged commit.
    Returns (number of cut points, number of images that lost an acknowledged commit)."""
    template = os.path.join(workdir, "template.db")
    db = connect(vfs, template, journal=journal, sync=sync)
    db.execute("pragma wal_autocheckpoint=8")
    db.execute("create table t(x integer primary key, pad blob)")
    db.close()
    vfs.reset()
    dry = os.path.join(workdir, "dry.db")
    shutil.copyfile(template, dry)
    db = connect(vfs, dry, journal=journal, sync=sync)
    db.execute("pragma wal_autocheckpoint=8")
    start = vfs.io_calls
    workload(db, [])
    total = vfs.io_calls - start
    db.close()
    assert total > 10
    lost = 0
    for n in range(total):
        vfs.reset()
        path = os.path.join(workdir, f"run{n}.db")
        shutil.copyfile(template, path)
        db = connect(vfs, path, journal=journal, sync=sync)
        db.execute("pragma wal_autocheckpoint=8")
        vfs.fail_after(n, persistent=True)
        acked: list[int] = []
        with contextlib.suppress(apsw.Error):  # the power cut ends the workload
            workload(db, acked)
        assert vfs.faults_fired >= 1  # the cut happened (the workload is deterministic)
        img = vfs.crash_image(image_dir(workdir, "cut"), keep, random.Random(n), db=path)
        got = rows(img)
        assert got == list(range(len(got))), (n, got)
        assert len(got) <= len(acked) + 1, (n, got, acked)  # at most the one in flight
        if sync == "full":
            assert len(got) >= len(acked), (n, got, acked)
        lost += len(got) < len(acked)
        vfs.clear_faults()
        db.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
    return total, lost


def _workload(db: apsw.Connection, acked: list[int]) -> None:
    for i in range(12):
        db.execute("begin immediate")
        db.execute("insert into t values(?, randomblob(?))", (i, 100 + 1500 * (i % 3)))
        db.execute("commit")
        acked.append(i)


@pytest.mark.parametrize(
    ("journal", "sync", "keep"),
    [
        ("wal", "full", "none"),
        ("wal", "full", "random"),
        ("wal", "normal", "none"),
        ("wal", "normal", "random"),
        ("delete", "full", "random"),
    ],
)
def test_power_cut_at_every_io_call(vfs, workdir, journal, sync, keep):
    total, lost = crash_at_every_io_point(
        vfs, workdir, _workload, journal=journal, sync=sync, keep=keep
    )
    assert total > 12
    if sync == "normal":
        assert lost > 0  # NORMAL does lose acknowledged commits on power loss


def test_crash_image_picks_the_database(vfs, workdir):
    a = connect(vfs, os.path.join(workdir, "a.db"))
    a.execute("create table t(x)")
    img = vfs.crash_image(image_dir(workdir, 1), "none")
    assert os.path.basename(img) == "a.db"
    b = connect(vfs, os.path.join(workdir, "b.db"))
    with pytest.raises(ValueError):
        vfs.crash_image(image_dir(workdir, 2), "none")
    assert vfs.crash_image(image_dir(workdir, 2), "none", db=b.filename).endswith("b.db")
    with pytest.raises(ValueError):
        vfs.crash_image(image_dir(workdir, 3), "some")
    b.close()
    a.close()


def test_image_can_be_reopened_through_the_vfs_and_crashed_again(vfs, workdir):
    db = connect(vfs, os.path.join(workdir, "a.db"))
    db.execute("create table t(x integer primary key)")
    db.execute("insert into t values(0)")
    img = vfs.crash_image(image_dir(workdir, 1), "random", 7)
    db.close()
    db2 = connect(vfs, img)
    db2.execute("insert into t values(1)")
    img2 = vfs.crash_image(image_dir(workdir, 2), "none")
    assert rows(img2) == [0, 1]
    db2.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_the_model_catches_synchronous_off(vfs, workdir, journal):
    """The images have teeth: without syncs, some random images are corrupt or lose a
    commit out of order (and none of this happens with FULL, tested above)."""
    db = connect(vfs, os.path.join(workdir, "a.db"), journal=journal, sync="off")
    db.execute("pragma cache_size=5")
    db.execute("pragma wal_autocheckpoint=20")  # unsynced checkpoints break WAL images
    db.execute("create table t(x integer primary key, pad blob)")
    vfs.mark_synced()
    broken = 0
    for seed in range(20):
        db.execute("insert into t values(?, randomblob(?))", (seed, 50 + 700 * (seed % 5)))
        if seed % 4 == 1:
            db.execute("begin")
            db.execute(
                f"insert into t select 100000 + value, randomblob(2000) from {SERIES}", (1, 30)
            )
        img = vfs.crash_image(image_dir(workdir, "off"), "random", seed)
        try:
            got = rows(img)
        except (AssertionError, apsw.Error):
            broken += 1
        else:
            broken += got != list(range(len(got)))
        if not db.get_autocommit():
            db.execute("rollback")
    db.close()
    assert broken > 0


def test_two_connections_share_the_unsynced_log(vfs, workdir):
    path = os.path.join(workdir, "a.db")
    a = connect(vfs, path, sync="normal")
    b = connect(vfs, path, sync="full")
    a.execute("create table t(x integer primary key)")
    a.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)
    a.execute("insert into t values(0)")  # NORMAL: not synced yet ...
    b.execute("insert into t values(1)")  # ... until FULL syncs the shared WAL file
    assert vfs.unsynced_ops(path + "-wal") == 0
    a.execute("insert into t values(2)")
    assert rows(vfs.crash_image(image_dir(workdir, 1), "none", db=path)) == [0, 1]
    b.close()
    a.close()
