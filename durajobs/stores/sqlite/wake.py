"""The daemon's wake-up signal on SQLite: a Unix datagram socket named after the database.

A process that commits an alarm (or queues work) sends one empty datagram to the socket;
a daemon sleeping on that socket wakes at once and re-reads the earliest alarm. No broker, no
connection, a few microseconds when nobody listens. The signal is only an optimisation: the
daemon re-reads the database on start-up and whenever its own timer fires, so a lost datagram
delays nothing that was already due by more than the daemon's next natural wake-up.

The socket is the file ``<real path>.wake`` beside the database, so that a wake-up reaches the
daemon from every process that can open the database: other network namespaces (containers
with their own network sharing the volume) and other mount namespaces (the directory
bind-mounted elsewhere: the socket file is the same inode under every path). A symlink or
another spelling of the path wakes the same daemon. "One daemon per file" is the kernel lock
(``claims``), not the socket: a daemon binds only after it holds that lock, so replacing a
stale socket file is safe. Where that path is too long for a socket address (108 bytes on
Linux), Linux uses an abstract socket named after a hash of the path instead (abstract names
are per network namespace).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys

__all__ = ["WakeListener", "Waker", "wake_address"]

_MAX_PATH = 104  # sun_path is 108 bytes on Linux, 104 on macOS (with its NUL)
_ABANDONED: list[socket.socket] = []


def wake_address(db_path: str) -> str | bytes:
    """The socket address that daemons of ``db_path`` listen on."""
    path = os.path.realpath(db_path) + ".wake"
    if len(os.fsencode(path)) < _MAX_PATH or not sys.platform.startswith("linux"):
        return path
    digest = hashlib.blake2b(path.encode(errors="surrogateescape"), digest_size=12).hexdigest()
    return b"\0durajobs-" + digest.encode()


class Waker:
    """Sends wake-ups; never raises (a missing daemon is normal)."""

    def __init__(self, db_path: str) -> None:
        self.address = wake_address(db_path)
        self._sock: socket.socket | None = None
        self._missing = False

    def poke_at_commit(self) -> None:
        """Nothing to save: a wake-up is a datagram, not a round trip."""

    def poke(self) -> None:
        """Tell a listening daemon that the earliest alarm may have changed."""
        address = self.address
        if self._missing and isinstance(address, str) and not os.access(address, os.F_OK):
            # No daemon has bound the socket: a stat is cheaper than a failed send (and
            # os.access than os.path.exists, which raises and catches FileNotFoundError).
            return
        sock = self._sock
        if sock is None:
            try:
                sock = self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
            except OSError:
                return
        try:
            sock.sendto(b"", address)
            self._missing = False
        except OSError:
            # No daemon (or a stale socket file), or its queue is full (then it is awake).
            self._missing = True

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def abandon(self) -> None:
        """In a forked child: drop the parent's socket without using it (kept alive)."""
        if self._sock is not None:
            _ABANDONED.append(self._sock)
            self._sock = None


class WakeListener:
    """The daemon's end: bind the wake socket and drain it when readable.

    Raises:
        OSError: the socket cannot be bound (a stale socket file is replaced; the daemon
            checks that no other daemon serves the file before it binds).
    """

    def __init__(self, db_path: str) -> None:
        self.address = wake_address(db_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if isinstance(self.address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # a stale socket file from a dead daemon
        sock.bind(self.address)
        sock.setblocking(False)
        self.sock = sock

    def fileno(self) -> int:
        """For ``selectors``."""
        return self.sock.fileno()

    def drain(self) -> int:
        """Read every pending datagram; returns how many there were."""
        count = 0
        while True:
            try:
                self.sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return count
            count += 1

    def close(self) -> None:
        """Close and remove the socket file."""
        self.sock.close()
        if isinstance(self.address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)

    def detach(self) -> None:
        """In a forked child: close the socket, leaving the file to the parent."""
        self.sock.close()
