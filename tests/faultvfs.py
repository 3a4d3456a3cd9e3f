"""A fault-injecting, power-loss-simulating SQLite VFS for the crash-recovery tests.

``FaultVFS`` registers an apsw VFS that inherits everything from the default (unix) VFS and
wraps every file it opens in a ``FaultFile``. The wrapper forwards all I/O to the real file and
adds two things:

* **Fault injection.** ``vfs.fail_after(n, kind=..., error=..., persistent=...)`` makes the
  (n+1)-th matching ``xWrite``/``xSync``/``xTruncate`` from now raise an I/O error
  (``SQLITE_IOERR_WRITE``/``_FSYNC``/``_TRUNCATE``) or ``SQLITE_FULL``. The failed call does
  nothing to the real file. ``persistent=True`` keeps failing every later matching call until
  ``vfs.clear_faults()``.

* **Power loss.** For every durable file (main database, WAL, rollback journal) the shim keeps
  the writes and truncates made since that file's last successful ``xSync``, with the bytes each
  one overwrote. The writes still reach the real file, so live connections see them.
  ``vfs.crash_image(dest_dir, keep=...)`` writes a copy of the database's files as the disk
  could look after a power cut: the unsynced operations are undone, and then none, all, or a
  random subset of them (per operation, in their original order) are applied again. The
  ``-shm`` file is never copied (it is not durable; SQLite rebuilds it from the WAL).

How apsw maps errors: a ``VFSFile`` method signals an SQLite error by raising the apsw exception
for it (``apsw.exception_for(code)`` sets ``result``/``extendedresult``); SQLite gets the code
and, when the statement fails because of it, apsw re-raises *the very exception object raised
in the VFS* to the caller (not a fresh one built from SQLite's message). If SQLite itself
swallows a VFS error (for example a failed checkpoint after a successful commit), apsw still
raises the pending exception when control returns to Python, so an exception from COMMIT does
not prove a rollback.

Model and limits (see the tests in ``test_faultvfs.py``):

* ``xSync`` on a file makes all earlier writes to that *path* durable (as ``fsync`` on Linux
  does for the inode, whichever descriptor wrote). ``skip_sync=True`` (default) does not call
  the real ``fsync`` but still marks the sync point.
* File creation and deletion (``xDelete``) are treated as durable at once; a journal deleted in
  ``journal_mode=DELETE`` does not come back after the crash. Torn (partial) writes and
  reordering of two writes to the same bytes are not simulated.
* Only I/O done through this VFS object in this process is logged. Writes made by other
  processes, or by connections that use another VFS, count as already synced.
* ``crash_image`` reads the live files through open ``FaultFile`` handles (opening and closing
  a second descriptor on a database file would drop the process's POSIX locks on it). Files
  are handled in memory, so it is meant for test-sized databases.
* Keep a reference to the ``FaultVFS`` object for as long as connections use it: apsw
  unregisters the VFS when it is garbage collected.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field

import apsw

__all__ = ["Fault", "FaultFile", "FaultVFS"]

_KINDS = ("any", "write", "sync", "truncate")
_ERRORS = ("ioerr", "full")
_FILES = ("any", "db", "wal", "journal", "temp")
_KEEP = ("none", "all", "random")

_IOERR_CODE = {
    "write": apsw.SQLITE_IOERR_WRITE,
    "sync": apsw.SQLITE_IOERR_FSYNC,
    "truncate": apsw.SQLITE_IOERR_TRUNCATE,
}

# Files whose contents survive a power cut (and so get an unsynced-write log).
_DURABLE = ("db", "wal", "journal", "super_journal")

_READ_CHUNK = 1 << 20


def _file_kind(flags: int) -> str:
    if flags & apsw.SQLITE_OPEN_MAIN_DB:
        return "db"
    if flags & apsw.SQLITE_OPEN_WAL:
        return "wal"
    if flags & apsw.SQLITE_OPEN_MAIN_JOURNAL:
        return "journal"
    if flags & apsw.SQLITE_OPEN_SUPER_JOURNAL:
        return "super_journal"
    return "temp"


@dataclass
class Fault:
    """One armed fault (returned by ``FaultVFS.fail_after``)."""

    kind: str
    error: str
    persistent: bool
    file: str
    remaining: int
    fired: int = 0
    armed: bool = True

    def matches(self, kind: str, file_kind: str) -> bool:
        return (
            self.armed
            and self.kind in ("any", kind)
            and (self.file == "any" or self.file == file_kind)
        )


@dataclass
class _Write:
    offset: int
    old_size: int
    old: bytes  # the bytes this write overwrote (only the part inside old_size)
    new: bytes


@dataclass
class _Truncate:
    new_size: int
    old_size: int
    tail: bytes  # bytes [new_size, old_size) removed by a shrinking truncate


@dataclass
class _CrashStats:
    unsynced: int = 0
    kept: int = 0
    dropped: int = 0
    files: dict[str, int] = field(default_factory=dict)


class FaultFile(apsw.VFSFile):
    """A file of the default VFS, with I/O counted, failable and logged for power loss."""

    def __init__(self, vfs: FaultVFS, name: str | apsw.URIFilename | None, flags: list[int]):
        self._vfs = vfs
        if isinstance(name, apsw.URIFilename):
            self.path: str | None = name.filename()
        else:
            self.path = name
        self.kind = _file_kind(flags[0])
        self._durable = self.kind in _DURABLE and self.path is not None
        self._key = self.path or ""  # the unsynced-log key (only used when durable)
        self._closed = False
        super().__init__(vfs.base, name, flags)
        vfs._opened(self)

    def __repr__(self) -> str:
        return f"<FaultFile {self.kind} {self.path!r}>"

    # -- the I/O calls the shim intercepts ------------------------------------------------

    def xWrite(self, data: bytes, offset: int) -> None:
        self._vfs._io("write", self)
        if not self._durable:
            super().xWrite(data, offset)
            return
        new = bytes(data)
        old_size = super().xFileSize()
        end = min(offset + len(new), old_size)
        old = super().xRead(end - offset, offset) if end > offset else b""
        super().xWrite(new, offset)
        self._vfs._log(self._key, _Write(offset, old_size, old, new))

    def xTruncate(self, newsize: int) -> None:
        self._vfs._io("truncate", self)
        if not self._durable:
            super().xTruncate(newsize)
            return
        old_size = super().xFileSize()
        tail = super().xRead(old_size - newsize, newsize) if newsize < old_size else b""
        super().xTruncate(newsize)
        if newsize != old_size:
            self._vfs._log(self._key, _Truncate(newsize, old_size, tail))

    def xSync(self, flags: int) -> None:
        self._vfs._io("sync", self)
        if not self._vfs.skip_sync:
            super().xSync(flags)
        if self._durable:
            self._vfs._synced(self._key)

    def xClose(self) -> None:
        if not self._closed:
            self._closed = True
            self._vfs._closed(self)
        super().xClose()

    # -- for crash_image -------------------------------------------------------------------

    def _read_all(self) -> bytes:
        size = super().xFileSize()
        parts = []
        pos = 0
        while pos < size:
            n = min(_READ_CHUNK, size - pos)
            parts.append(super().xRead(n, pos))
            pos += n
        return b"".join(parts)


class FaultVFS(apsw.VFS):
    """A pass-through VFS over the default VFS with fault injection and power-loss images.

    ``FaultVFS(name="faultvfs", *, skip_sync=True)`` registers the VFS; open databases with
    ``apsw.Connection(path, vfs=vfs.vfs_name)``.
    """

    def __init__(self, name: str = "faultvfs", *, skip_sync: bool = True):
        self.vfs_name = name
        self.base = ""  # the default VFS
        self.skip_sync = skip_sync
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._unsynced: dict[str, list[_Write | _Truncate]] = {}
        self._handles: dict[str, list[FaultFile]] = {}
        self._main_dbs: dict[str, None] = {}  # insertion-ordered set
        self.writes = 0
        self.syncs = 0
        self.truncates = 0
        self.faults_fired = 0
        self.last_fault: tuple[str, str, str | None] | None = None
        self.last_crash: _CrashStats | None = None
        super().__init__(name, base=self.base)

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> FaultFile:
        return FaultFile(self, name, flags)

    # -- counters ---------------------------------------------------------------------------

    @property
    def io_calls(self) -> int:
        """Writes + syncs + truncates seen so far (failed ones included)."""
        return self.writes + self.syncs + self.truncates

    def counts(self) -> dict[str, int]:
        return {"write": self.writes, "sync": self.syncs, "truncate": self.truncates}

    # -- fault injection --------------------------------------------------------------------

    def fail_after(
        self,
        n: int,
        *,
        kind: str = "any",
        error: str = "ioerr",
        persistent: bool = False,
        file: str = "any",
    ) -> Fault:
        """Make the (n+1)-th matching I/O call from now fail (``n=0``: the next one).

        ``kind``: "any", "write", "sync" or "truncate". ``error``: "ioerr" raises
        ``apsw.IOError`` (extended code ``SQLITE_IOERR_WRITE``/``_FSYNC``/``_TRUNCATE``),
        "full" raises ``apsw.FullError`` (``SQLITE_FULL``). ``file`` restricts the match to
        one kind of file: "any", "db", "wal", "journal" or "temp". With ``persistent=True``
        every later matching call fails too, until ``clear_faults()``. Several faults may be
        armed at once; each counts its own matching calls.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}")
        if error not in _ERRORS:
            raise ValueError(f"error must be one of {_ERRORS}")
        if file not in _FILES:
            raise ValueError(f"file must be one of {_FILES}")
        fault = Fault(kind=kind, error=error, persistent=persistent, file=file, remaining=n)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Disarm every fault (the counters and ``faults_fired`` are kept)."""
        with self._lock:
            for fault in self._faults:
                fault.armed = False
            self._faults.clear()

    @property
    def armed(self) -> bool:
        return any(f.armed for f in self._faults)

    def _io(self, kind: str, f: FaultFile) -> None:
        """Count one I/O call and raise the injected error if a fault fires on it."""
        with self._lock:
            if kind == "write":
                self.writes += 1
            elif kind == "sync":
                self.syncs += 1
            else:
                self.truncates += 1
            if not self._faults:
                return
            fired: Fault | None = None
            file_kind = "journal" if f.kind == "super_journal" else f.kind
            for fault in self._faults:
                if not fault.matches(kind, file_kind):
                    continue
                if fault.remaining > 0:
                    fault.remaining -= 1
                    continue
                fault.fired += 1
                if fired is None:
                    fired = fault
                if not fault.persistent:
                    fault.armed = False
            self._faults = [x for x in self._faults if x.armed]
            if fired is None:
                return
            self.faults_fired += 1
            self.last_fault = (kind, fired.error, f.path)
        if fired.error == "full":
            exc = apsw.exception_for(apsw.SQLITE_FULL)
            exc.args = (f"database or disk is full (faultvfs: injected on {kind} of {f.path})",)
        else:
            exc = apsw.exception_for(_IOERR_CODE[kind])
            exc.args = (f"disk I/O error (faultvfs: injected on {kind} of {f.path})",)
        raise exc

    # -- power-loss log ---------------------------------------------------------------------

    def _log(self, path: str, op: _Write | _Truncate) -> None:
        with self._lock:
            self._unsynced.setdefault(path, []).append(op)

    def _synced(self, path: str) -> None:
        with self._lock:
            self._unsynced.pop(path, None)

    def _opened(self, f: FaultFile) -> None:
        if f.path is None:
            return
        with self._lock:
            self._handles.setdefault(f.path, []).append(f)
            if f.kind == "db":
                self._main_dbs.pop(f.path, None)
                self._main_dbs[f.path] = None

    def _closed(self, f: FaultFile) -> None:
        if f.path is None:
            return
        with self._lock:
            handles = self._handles.get(f.path, [])
            if f in handles:
                handles.remove(f)
            if not handles:
                self._handles.pop(f.path, None)

    def xDelete(self, filename: str, syncdir: bool) -> None:
        super().xDelete(filename, syncdir)
        # Deletion is treated as durable at once: the unsynced writes go with the file.
        with self._lock:
            self._unsynced.pop(filename, None)

    def unsynced_ops(self, path: str | None = None) -> int:
        """Number of writes/truncates not yet synced (for one path, or in total)."""
        with self._lock:
            if path is not None:
                return len(self._unsynced.get(os.path.abspath(path), ()))
            return sum(len(ops) for ops in self._unsynced.values())

    def mark_synced(self) -> None:
        """Treat everything written so far as durable (forget the unsynced-write logs)."""
        with self._lock:
            self._unsynced.clear()

    def reset(self) -> None:
        """Clear the counters, the faults and the unsynced-write logs."""
        with self._lock:
            self._faults.clear()
            self._unsynced.clear()
            self.writes = self.syncs = self.truncates = 0
            self.faults_fired = 0
            self.last_fault = None
            self.last_crash = None

    # -- crash images -----------------------------------------------------------------------

    def _pick_db(self, db: str | None) -> str:
        if db is not None:
            return os.path.abspath(db)
        with self._lock:
            live = [p for p in self._main_dbs if p in self._handles]
            known = list(self._main_dbs)
        if len(live) == 1:
            return live[0]
        existing = [p for p in known if os.path.exists(p)]
        if len(existing) == 1:
            return existing[0]
        raise ValueError(f"crash_image: pass db= (main databases known to this VFS: {known})")

    def crash_image(
        self,
        dest_dir: str | os.PathLike[str],
        keep: str = "none",
        rng: random.Random | int | None = None,
        *,
        db: str | os.PathLike[str] | None = None,
        p: float = 0.5,
    ) -> str:
        """Write the disk as it could be after a power cut now; return the image's db path.

        The main database file, its ``-wal`` and its ``-journal`` (those that exist) are
        written to ``dest_dir`` under their own base names (any ``-shm`` there is removed).
        Unsynced writes/truncates are dropped (``keep="none"``), all kept (``"all"``), or each
        kept with probability ``p`` (``"random"``, drawn from ``rng``: a ``random.Random`` or
        a seed; ``None`` means seed 0). ``db`` picks the database when this VFS has seen
        several. Statistics of the last call are in ``vfs.last_crash``. The live files and
        connections are not touched.
        """
        if keep not in _KEEP:
            raise ValueError(f"keep must be one of {_KEEP}")
        if not isinstance(rng, random.Random):
            rng = random.Random(0 if rng is None else rng)
        db_path = self._pick_db(None if db is None else os.fspath(db))
        dest_dir = os.fspath(dest_dir)
        os.makedirs(dest_dir, exist_ok=True)
        base = os.path.basename(db_path)
        stats = _CrashStats()
        for suffix in ("", "-wal", "-journal", "-shm"):
            dst = os.path.join(dest_dir, base + suffix)
            if os.path.exists(dst):
                os.unlink(dst)
        with self._lock:
            snapshot = {
                suffix: (
                    list(self._unsynced.get(db_path + suffix, ())),
                    next(iter(self._handles.get(db_path + suffix, ())), None),
                )
                for suffix in ("", "-wal", "-journal")
            }
            # Read while holding the lock so no logged write slips in between.
            contents: dict[str, bytes | None] = {}
            for suffix, (_ops, handle) in snapshot.items():
                src = db_path + suffix
                if handle is not None:
                    contents[suffix] = handle._read_all()
                elif os.path.exists(src):
                    with open(src, "rb") as fh:
                        contents[suffix] = fh.read()
                else:
                    contents[suffix] = None
        for suffix in ("", "-wal", "-journal"):
            data = contents[suffix]
            if data is None:
                continue
            ops = snapshot[suffix][0]
            stats.unsynced += len(ops)
            if keep == "all" or not ops:
                image = data
                stats.kept += len(ops)
            else:
                buf = bytearray(data)
                for op in reversed(ops):
                    _undo(buf, op)
                for op in ops:
                    if keep == "random" and rng.random() < p:
                        _redo(buf, op)
                        stats.kept += 1
                    else:
                        stats.dropped += 1
                image = bytes(buf)
            stats.files[base + suffix] = len(image)
            with open(os.path.join(dest_dir, base + suffix), "wb") as fh:
                fh.write(image)
        self.last_crash = stats
        return os.path.join(dest_dir, base)


def _undo(buf: bytearray, op: _Write | _Truncate) -> None:
    if isinstance(op, _Write):
        if len(buf) < op.offset:  # only if the file was changed behind the VFS's back
            buf.extend(bytes(op.offset - len(buf)))
        buf[op.offset : op.offset + len(op.old)] = op.old
        _resize(buf, op.old_size)
    else:
        _resize(buf, op.new_size)
        if op.tail:
            buf.extend(op.tail)
        _resize(buf, op.old_size)


def _redo(buf: bytearray, op: _Write | _Truncate) -> None:
    if isinstance(op, _Write):
        if len(buf) < op.offset:  # an earlier extension was lost: the gap reads as zeros
            buf.extend(bytes(op.offset - len(buf)))
        buf[op.offset : op.offset + len(op.new)] = op.new
    else:
        _resize(buf, op.new_size)


def _resize(buf: bytearray, size: int) -> None:
    if len(buf) > size:
        del buf[size:]
    elif len(buf) < size:
        buf.extend(bytes(size - len(buf)))
