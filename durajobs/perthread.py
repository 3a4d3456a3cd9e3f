"""Values opened once per thread and closed when that thread ends (no thread of our own).

A ``Jobs`` shared by a web server's threads keeps one engine (connection, claim handle, wake
socket) per thread, and the dashboard one ``Admin`` per thread. A server that starts a thread
per request (Flask's and Django's development servers, ``socketserver.ThreadingMixIn``) would
exhaust the database's connections if those outlived their threads. Each value therefore sits
in a small holder in the thread's ``threading.local`` data: Python frees that data as the
thread ends (in the ending thread, before ``join()`` returns), and the holder closes the value.

Whoever takes a value out of the open set closes it -- the ending thread, ``close_all()`` or,
in a forked child, ``forget()`` (which hands the parent's values back *without* closing them:
a child must never close its parent's connections). A holder closes nothing in a process other
than the one that opened it: a forked child frees its copies of the parent threads' data too.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerThread"]

log = logging.getLogger("durajobs")

T = TypeVar("T")


class PerThread(Generic[T]):
    """One value per thread: opened by ``open()`` on a thread's first ``get()``, closed by
    ``close(value)`` when the thread ends or at ``close_all()``."""

    def __init__(self, opener: Callable[[], T], closer: Callable[[T], None]) -> None:
        self._open = opener
        self._close = closer
        self._local = threading.local()
        self._values: list[T] = []
        # Guards the open list, never a step; re-entrant: a holder may be freed (and take its
        # value) while this thread holds the lock, as garbage collection runs anywhere.
        self._lock = threading.RLock()

    def get(self) -> T:
        """The calling thread's value, opened on its first call.

        Raises:
            Exception: whatever ``open()`` raises (nothing is kept then).
        """
        holder: _Holder[T] | None = getattr(self._local, "holder", None)
        if holder is None:
            value = self._open()
            with self._lock:
                self._values.append(value)
            holder = self._local.holder = _Holder(self, value)
        return holder.value

    def take(self, value: T) -> bool:
        """Take ``value`` out of the open ones; ``False`` if another already took it (then
        closing it is theirs)."""
        with self._lock:
            for index, held in enumerate(self._values):
                if held is value:
                    del self._values[index]
                    return True
            return False

    def close_all(self) -> list[BaseException]:
        """Close every open value (other threads' too); returns what their closes raised.

        Call it when no other thread uses a value.
        """
        with self._lock:
            values, self._values = self._values, []
        self._local = threading.local()
        failures: list[BaseException] = []
        for value in values:
            try:
                self._close(value)
            except Exception as exc:  # closing the others matters more; the caller decides
                failures.append(exc)
        return failures

    def forget(self) -> list[T]:
        """In a child right after ``fork()``: drop every value without closing it and return
        them (the parent's; the child opens its own on first use)."""
        self._lock = threading.RLock()  # another thread may have held it at the fork
        values, self._values = self._values, []
        self._local = threading.local()
        return values


class _Holder(Generic[T]):
    __slots__ = ("owner", "pid", "value")

    def __init__(self, owner: PerThread[T], value: T) -> None:
        self.owner = weakref.ref(owner)  # no cycle: the owner holds the thread-local data
        self.value = value
        self.pid = os.getpid()

    def __del__(self) -> None:
        if self.pid != os.getpid():
            return  # a forked child's copy of a parent thread's data
        owner = self.owner()
        if owner is None or not owner.take(self.value):
            return  # close_all() or forget() has it (or the owner is gone with its values)
        try:
            owner._close(self.value)
        except Exception as exc:  # a thread's end must not raise; stored data is safe
            log.warning("durajobs: closing an ended thread's connection failed: %s", exc)
