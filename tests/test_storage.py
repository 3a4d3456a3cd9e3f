"""Unusable files raise StorageError naming the path and the reason, and lose nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import attrs
import pytest
from faultvfs import FaultVFS

from durajobs import Continuous, FakeClock, Jobs, StorageError, every
from durajobs.stores.sqlite.store import SCHEMA_VERSION, SqliteStore


@attrs.define
class Counter:
    n: int = 0


def bump(ctx: Any) -> None:
    ctx.state = Counter(ctx.state.n + 1)


REGISTRY = {"c": Continuous(state=Counter, schedule=every("1 minute"), execute=bump)}


@pytest.fixture
def vfs() -> Iterator[FaultVFS]:
    shim = FaultVFS(f"fault-{uuid.uuid4().hex[:8]}")
    yield shim
    shim.unregister()


def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "jobs.db"
    with pytest.raises(StorageError, match=r"nope/jobs\.db.*directory .*nope does not exist"):
        Jobs(path, REGISTRY)
    assert not (tmp_path / "nope").exists()


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StorageError, match=r"notes\.db.*not a database"):
        Jobs(path, REGISTRY)
    assert path.read_text().startswith("these are my notes")


def test_someone_elses_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(StorageError, match="not a durajobs database"):
        Jobs(path, REGISTRY)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    Jobs(path, REGISTRY).close()
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StorageError, match="newer than this durajobs"):
        Jobs(path, REGISTRY)


def test_corrupt_database(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    with Jobs(path, REGISTRY, clock=FakeClock()) as jobs:
        for i in range(300):
            jobs.continuous("c").start(f"user-{i}", Counter())
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = path.stat().st_size
    with path.open("r+b") as f:
        for offset in range(4096, size, 4096):  # every page but the header page
            f.seek(offset)
            f.write(b"\xde\xad\xbe\xef" * 256)
    pattern = r"corrupt\.db.*(corrupt|malformed|not a database)"
    with pytest.raises(StorageError, match=pattern), Jobs(path, REGISTRY, clock=FakeClock()) as j:
        j.continuous("c").status("user-7")


def _read_only_script(path: Path) -> str:
    return textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from durajobs import StorageError
        from test_storage import REGISTRY, Counter
        from durajobs import Jobs
        try:
            with Jobs({str(path)!r}, REGISTRY) as jobs:
                jobs.continuous("c").start("u2", Counter())
        except StorageError as exc:
            print("STORAGE", exc)
        """
    )


def test_read_only_file(tmp_path: Path) -> None:
    folder = Path(f"/dev/shm/durajobs-ro-{uuid.uuid4().hex[:8]}")
    folder.mkdir()
    try:
        os.chmod(folder, 0o777)
        path = folder / "ro.db"
        with Jobs(path, REGISTRY, clock=FakeClock()) as jobs:
            jobs.continuous("c").start("u1", Counter())
        for name in os.listdir(folder):
            os.chmod(folder / name, 0o444)
        os.chmod(folder, 0o555)

        command = [sys.executable, "-c", _read_only_script(path)]
        if os.geteuid() == 0:
            # root ignores file modes: make the folder a read-only bind mount in a private
            # mount namespace instead (needs CAP_SYS_ADMIN, which root has here).
            if shutil.which("unshare") is None:
                pytest.skip("running as root without unshare: cannot make a read-only file")
            script = f'mount --bind -o ro "{folder}" "{folder}" && exec "$@"'
            command = ["unshare", "--mount", "sh", "-c", script, "sh", *command]
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert out.stdout.startswith("STORAGE"), out.stdout + out.stderr
        assert "ro.db" in out.stdout
        assert "read-only" in out.stdout
    finally:
        os.chmod(folder, 0o755)
        for name in os.listdir(folder):
            os.unlink(folder / name)
        folder.rmdir()


def test_locked_past_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    with Jobs(path, REGISTRY, clock=FakeClock(), busy_timeout=0.05) as jobs:
        other = apsw.Connection(str(path))
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageError, match=r"locked\.db.*locked"):
                jobs.continuous("c").start("u", Counter())
        finally:
            other.execute("ROLLBACK")
            other.close()
        # nothing half-written, and the same object works again
        assert jobs.continuous("c").status("u").status == "not_found"
        assert jobs.continuous("c").start("u", Counter()).created


def test_disk_full_loses_nothing_and_recovers(tmp_path: Path, vfs: FaultVFS) -> None:
    path = tmp_path / "full.db"
    clock = FakeClock()
    with Jobs(path, REGISTRY, clock=clock, vfs=vfs.vfs_name) as jobs:
        client = jobs.continuous("c")
        client.start("u", Counter())
        assert client.get_state("u") == Counter(1)
        vfs.fail_after(0, kind="write", error="full", persistent=True)
        with pytest.raises(StorageError, match=r"full\.db.*full"):
            client.trigger("u")
        with pytest.raises(StorageError, match="full"):
            client.start("v", Counter())
        vfs.clear_faults()
        assert client.get_state("u") == Counter(1)
        assert client.status("u").run_count == 1
        assert client.status("v").status == "not_found"
        assert client.trigger("u").triggered
        assert client.get_state("u") == Counter(2)
        assert jobs.engine.store.integrity_check() == ["ok"]


def test_io_error_on_commit_rolls_back_cleanly(tmp_path: Path, vfs: FaultVFS) -> None:
    path = tmp_path / "io.db"
    with Jobs(path, REGISTRY, clock=FakeClock(), vfs=vfs.vfs_name) as jobs:
        client = jobs.continuous("c")
        client.start("u", Counter())
        vfs.fail_after(0, kind="sync", error="ioerr")
        with pytest.raises(StorageError, match=r"io\.db"):
            client.trigger("u")
        assert client.get_state("u") == Counter(1)
        assert client.trigger("u").triggered
        assert client.get_state("u") == Counter(2)


def test_commit_error_after_the_data_committed_is_not_reported_as_failure(
    tmp_path: Path, vfs: FaultVFS
) -> None:
    """apsw re-raises a failed checkpoint from COMMIT although the transaction committed."""
    path = tmp_path / "ckpt.db"
    with Jobs(path, REGISTRY, clock=FakeClock(), vfs=vfs.vfs_name) as jobs:
        client = jobs.continuous("c")
        client.start("u", Counter())
        store: SqliteStore = jobs.engine.store
        store._conn.execute("PRAGMA wal_autocheckpoint=1")
        vfs.fail_after(0, kind="write", error="ioerr", file="db")  # the checkpoint's write
        result = client.trigger("u")  # committed: must not raise
        assert result.triggered
        assert vfs.faults_fired == 1
        assert client.get_state("u") == Counter(2)
        assert client.status("u").run_count == 2


def test_storage_error_is_an_oserror_and_a_durajobs_error(tmp_path: Path) -> None:
    from durajobs import DurajobsError

    with pytest.raises(OSError) as info:
        Jobs(tmp_path / "x" / "y.db", REGISTRY)
    assert isinstance(info.value, DurajobsError)


def test_forward_migration_from_schema_1(tmp_path: Path) -> None:
    """A file written by schema version 1 opens, migrates, and keeps its instances."""
    from durajobs.stores.sqlite import store as store_module

    path = tmp_path / "v1.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in store_module.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.close()
    with Jobs(path, REGISTRY, clock=FakeClock()) as jobs:
        jobs.continuous("c").start("u", Counter())
    conn = apsw.Connection(str(path))
    assert conn.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='index'")}
    assert "instances_failed" in indexes
    conn.close()
    with Jobs(path, REGISTRY, clock=FakeClock()) as jobs:
        assert jobs.continuous("c").get_state("u") == Counter(1)
