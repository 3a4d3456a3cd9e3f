"""Per-instance claims as OS byte-range locks on a file beside the database.

A step claims its instance with an exclusive Linux open-file-description (OFD) lock on one byte
of ``<db>.lock``, at an offset derived from a hash of the instance id. The claim costs no disk
write and no fsync (about a microsecond), two file descriptions conflict even inside one process
(so threads and several ``Jobs`` objects serialize too), and the kernel drops the lock the
instant its process dies, so the work of a SIGKILLed process is free for others at once: no
lease to expire, nothing stale to clean up. Two instance ids whose hashes collide merely share
a claim (2**-62 odds).

Fairness: a caller that waits for a claim (``acquire``) also holds a "waiting" byte at
``offset + 2**62``; non-waiting claims (``try_acquire``, used by ``run_due`` and ``add``) yield
while someone waits, so a process that steps an instance back to back cannot starve a client.

Identity: the lock file is ``<real path of the database>.lock``, so a symlink or another
spelling of the path shares the claims of the file it names. A lock file that is deleted or
replaced while in use (a tmp cleaner, an operator tidying up) is noticed at the next claim: the
claim is taken on the file now at the path, and every process moves there as it claims. A
process that finds the lock file missing and creates it looks for processes that still hold the
deleted file open (``/proc/*/fd``) and claims on that file too, so a step that began before the
deletion still excludes it. Offset 0 is reserved for the daemon's
"one daemon per file" lock (``hold_daemon_lock``), which holds while the daemon lives, whatever
happens to its wake socket.

Where OFD locks are missing (macOS), classic POSIX ``F_SETLK`` locks are used: they serialize
processes but not two ``Jobs`` objects in one process.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import time
from collections.abc import Sequence

from durajobs.errors import InstanceBusyError, StorageError

__all__ = ["InstanceLocks", "lock_path"]

_SETLK = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)
_GETLK = getattr(fcntl, "F_OFD_GETLK", fcntl.F_GETLK)
_FLOCK = "hhqqi4x"  # struct flock on Linux x86-64/aarch64: type, whence, start, len, pid
_WRLCK = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
_PACK = struct.Struct(_FLOCK).pack
_UNPACK = struct.Struct(_FLOCK).unpack
_SPAN = 1 << 62  # claims live in [0, 2**62); "waiting" bytes in [2**62, 2**63)


_OFFSETS: dict[str, int] = {}  # instance id -> offset: steps come back to the same instances
_OFFSETS_MAX = 1 << 16


def lock_path(db_path: str) -> str:
    """The claim file of a database: beside its real path (symlinks resolved)."""
    return os.path.realpath(db_path) + ".lock"


_DAEMON_OFFSET = 0  # held by the daemon serving the file; no instance maps here


def lock_offset(instance_id: str) -> int:
    """The byte of the lock file that stands for ``instance_id``."""
    offset = _OFFSETS.get(instance_id)
    if offset is None:
        digest = hashlib.blake2b(instance_id.encode(), digest_size=8).digest()
        offset = int.from_bytes(digest, "little") % _SPAN or 1
        if len(_OFFSETS) >= _OFFSETS_MAX:
            _OFFSETS.clear()
        _OFFSETS[instance_id] = offset
    return offset


class InstanceLocks:
    """Exclusive per-instance locks held by this object (one open file description).

    Not for sharing between threads: each ``Jobs`` opens its own.

    Raises:
        StorageError: the lock file cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._identity = (0, 0)
        self._orphans: list[int] = []
        self._open()
        self._held: dict[int, int] = {}  # offset -> the descriptor it is held on
        self._retired: list[int] = []  # descriptors of a replaced file with claims still held

    def _open(self) -> None:
        created = False
        try:
            try:
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                fd = os.open(self.path, flags, 0o666)
                created = True
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            info = os.fstat(fd)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot open the lock file: {exc.strerror}") from None
        self._fd = fd
        self._identity = (info.st_dev, info.st_ino)
        # A new lock file where others may still claim on a deleted one: claim there too.
        self._orphans = _deleted_copies(self.path, self._identity) if created else []

    def _check_file(self) -> None:
        """Move to the file now at the path if ours was deleted or replaced."""
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return  # cannot tell (e.g. permissions): keep what we have
        old = self._fd
        self._open()
        if old in self._held.values():
            self._retired.append(old)  # released claims go back to the descriptor they are on
        else:
            os.close(old)

    def close(self) -> None:
        """Release every lock and close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            for fd in self._orphans:
                os.close(fd)
            self._orphans = []
            for fd in self._retired:
                os.close(fd)
            self._retired.clear()
            self._held.clear()

    def _set(self, offset: int, kind: int, fd: int | None = None) -> bool:
        packed = _PACK(kind, os.SEEK_SET, offset, 1, 0)
        try:
            fcntl.fcntl(self._fd if fd is None else fd, _SETLK, packed)
        except OSError as exc:
            if exc.errno in (11, 13):  # EAGAIN / EACCES: held by someone else
                return False
            raise StorageError(f"{self.path}: lock failed: {exc.strerror}") from None
        return True

    def try_acquire(self, instance_id: str) -> int | None:
        """Claim without waiting; returns a token for ``release`` or ``None`` if busy.

        Also ``None`` while another caller waits for this instance in ``acquire``.
        """
        offset = lock_offset(instance_id)
        if self._someone_waits(offset):
            return None
        return self._claim(offset)

    batch_claims = False  # a claim is one system call: claiming ahead would gain nothing
    several_daemons = False  # one daemon per file (hold_daemon_lock)

    def try_acquire_many(self, instance_ids: Sequence[str]) -> list[int | None]:
        """``try_acquire`` of each instance, in order."""
        return [self.try_acquire(instance_id) for instance_id in instance_ids]

    def anyone_waiting(self) -> bool:
        """Whether any other caller waits for any instance's claim (one system call)."""
        return self._probe(_SPAN, 0)  # len 0: from the first "waiting" byte to the end

    def waited_for(self, token: int) -> bool:
        """Whether another caller waits for the claim ``token`` stands for."""
        return self._someone_waits(token)

    def _probe(self, start: int, length: int) -> bool:
        packed = _PACK(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        try:
            result = fcntl.fcntl(self._fd, _GETLK, packed)
        except OSError as exc:
            raise StorageError(f"{self.path}: lock test failed: {exc.strerror}") from None
        return bool(_UNPACK(result)[0] != fcntl.F_UNLCK)

    def _someone_waits(self, offset: int) -> bool:
        return self._probe(offset + _SPAN, 1)

    def _claim(self, offset: int) -> int | None:
        if offset in self._held:
            # Our own description already holds it: the kernel would say yes, but it is
            # another step of this process on the same instance (re-entrant use).
            return None
        self._check_file()
        if not self._set(offset, fcntl.F_WRLCK):
            return None
        for index, fd in enumerate(self._orphans):
            if not self._set(offset, fcntl.F_WRLCK, fd):
                for taken in [self._fd, *self._orphans[:index]]:
                    self._set(offset, fcntl.F_UNLCK, taken)
                return None
        self._held[offset] = self._fd
        return offset

    def acquire(self, instance_id: str, timeout: float) -> int:
        """Claim, waiting up to ``timeout`` seconds for another step of the instance to end.

        Raises:
            InstanceBusyError: still busy after ``timeout``.
        """
        offset = lock_offset(instance_id)
        token = self._claim(offset)
        if token is not None:
            return token
        deadline = time.monotonic() + timeout
        delay = 0.0005
        # Announce that we wait (one waiter holds the byte; others just poll).
        waiting = self._set(offset + _SPAN, fcntl.F_WRLCK)
        try:
            while True:
                # F_OFD_SETLKW cannot time out without a signal (and signals are the
                # caller's); poll with a short backoff instead.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise InstanceBusyError(
                        f"{instance_id}: another step of this instance is still running after "
                        f"{timeout:g} s (wait_timeout)"
                    )
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.02)
                token = self._claim(offset)
                if token is not None:
                    return token
                if not waiting:
                    waiting = self._set(offset + _SPAN, fcntl.F_WRLCK)
        finally:
            if waiting:
                self._set(offset + _SPAN, fcntl.F_UNLCK)

    def release(self, token: int) -> None:
        """Drop a claim taken by ``acquire``/``try_acquire``."""
        fd = self._held.pop(token, None)
        if fd is not None and self._fd >= 0:
            self._set(token, fcntl.F_UNLCK, fd)
            for orphan in self._orphans:
                self._set(token, fcntl.F_UNLCK, orphan)
            if fd != self._fd and fd not in self._held.values():
                self._retired.remove(fd)
                os.close(fd)

    def release_at_commit(self, token: int) -> None:
        """Nothing to save: a release is a system call, not a round trip."""

    def release_many(self, tokens: list[int]) -> None:
        """Drop many claims (a bulk call's). When they are all this object holds, one system
        call drops them: the kernel keeps a file's locks in a list, so releasing thousands one
        by one would cost time quadratic in their number."""
        if (
            len(tokens) > 8
            and len(tokens) == len(self._held)
            and not self._retired
            and not self._orphans
            and self._fd >= 0
            and set(tokens) == self._held.keys()
        ):
            # [1, 2**62): every claim byte but the daemon's (offset 0); no "waiting" byte
            fcntl.fcntl(self._fd, _SETLK, _PACK(fcntl.F_UNLCK, os.SEEK_SET, 1, _SPAN - 1, 0))
            self._held.clear()
            return
        for token in tokens:
            self.release(token)

    def hold_daemon_lock(self) -> bool:
        """Take the file's "one daemon" lock for as long as this object is open.

        Returns ``False`` if another daemon holds it (a process's lock dies with it).
        """
        if self._set(_DAEMON_OFFSET, fcntl.F_WRLCK):
            self._held[_DAEMON_OFFSET] = self._fd
            return True
        return False

    def is_locked(self, instance_id: str) -> bool:
        """Whether some other file description holds the instance's claim right now."""
        offset = lock_offset(instance_id)
        if offset in self._held:
            return True
        return self._probe(offset, 1)


def _deleted_copies(path: str, identity: tuple[int, int]) -> list[int]:
    """Descriptors of deleted files once at ``path`` that other processes still hold open
    (found through ``/proc/*/fd``, Linux; none elsewhere or when not permitted)."""
    wanted = path + " (deleted)"
    found: dict[tuple[int, int], int] = {}
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            link = f"{folder}/{name}"
            try:
                if os.readlink(link) != wanted:
                    continue
                fd = os.open(link, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            info = os.fstat(fd)
            key = (info.st_dev, info.st_ino)
            if key == identity or key in found:
                os.close(fd)
            else:
                found[key] = fd
    return list(found.values())
