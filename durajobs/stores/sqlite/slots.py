"""Per-job concurrency slots as OS byte-range locks (the ``Slots`` protocol), on SQLite.

A job with ``concurrency=N`` has N slots: N consecutive bytes of ``<db>.slots`` (beside the
claims' ``<db>.lock``, created on first use) starting at an offset derived from a hash of the
job's name. A step of the job runs only while it holds one of them as an exclusive Linux
open-file-description (OFD) lock. Like a claim it writes nothing and costs a system call; the
kernel drops it the instant its process dies, so a SIGKILLed holder frees its slot at once.
Two descriptions conflict even in one process, so threads and ``Jobs`` objects count too.
Two jobs whose slot ranges overlap (a 2**-40 chance) would share the overlapping slots.

A file of their own, not the claims' file: the kernel walks every lock of a file at each lock
call, and ``run_due`` holds hundreds of claims during a group commit (measured: a slot taken
and given back in 13 us beside 256 claims, 4 us alone).

Where OFD locks are missing (macOS), classic POSIX locks serialize processes only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct

from durajobs.errors import StorageError

__all__ = ["JobSlots", "slots_path"]

_SETLK = getattr(fcntl, "F_OFD_SETLK", fcntl.F_SETLK)
_GETLK = getattr(fcntl, "F_OFD_GETLK", fcntl.F_GETLK)
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux: type, whence, start, len, pid
_PACK = _FLOCK.pack
_SPAN = (1 << 62) - (1 << 32)  # slot ranges start below 2**62 (the claims' span), room for N


def slots_path(db_path: str) -> str:
    """The slots' file of a database: beside its real path (symlinks resolved)."""
    return os.path.realpath(db_path) + ".slots"


_BASES: dict[str, int] = {}


def slot_base(job: str) -> int:
    """The first byte of ``job``'s slots in the file."""
    base = _BASES.get(job)
    if base is None:
        digest = hashlib.blake2b(b"slots\0" + job.encode(), digest_size=8).digest()
        base = _BASES[job] = int.from_bytes(digest, "little") % _SPAN or 1
    return base


class JobSlots:
    """Slots held by this object (one open file description of ``<db>.lock``).

    Not shared between threads: each engine opens its own.

    Raises:
        StorageError: the lock file cannot be opened.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise StorageError(f"{path}: cannot open the slots file: {exc.strerror}") from None
        self._held: set[int] = set()

    def _lock(self, offset: int, kind: int) -> bool:
        try:
            fcntl.fcntl(self._fd, _SETLK, _PACK(kind, os.SEEK_SET, offset, 1, 0))
        except OSError as exc:
            if exc.errno in (11, 13):  # EAGAIN / EACCES: held by someone else
                return False
            raise StorageError(f"{self.path}: slot lock failed: {exc.strerror}") from None
        return True

    def try_acquire(self, job: str, limit: int) -> int | None:
        """One of ``job``'s ``limit`` slots: a token for ``release``, or ``None`` if all are
        taken (by any process, this object included).

        Raises:
            StorageError: the lock could not be attempted.
        """
        base = slot_base(job)
        for offset in range(base, base + limit):
            if offset not in self._held and self._lock(offset, fcntl.F_WRLCK):
                self._held.add(offset)
                return offset
        return None

    def release(self, token: int) -> None:
        """Give a slot back (never raises)."""
        if token in self._held and self._fd >= 0:
            self._held.discard(token)
            with contextlib.suppress(StorageError):  # closing the descriptor drops it anyway
                self._lock(token, fcntl.F_UNLCK)

    def in_use(self, job: str, limit: int) -> int:
        """How many of ``job``'s slots are held now, by anyone (inspection).

        Raises:
            StorageError: the locks could not be tested.
        """
        base = slot_base(job)
        taken = 0
        for offset in range(base, base + limit):
            if offset in self._held:
                taken += 1
                continue
            packed = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
            try:
                result = fcntl.fcntl(self._fd, _GETLK, packed)
            except OSError as exc:
                raise StorageError(f"{self.path}: slot test failed: {exc.strerror}") from None
            taken += _FLOCK.unpack(result)[0] != fcntl.F_UNLCK
        return taken

    def close(self) -> None:
        """Release every slot and close (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._held.clear()
