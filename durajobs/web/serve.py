"""``durajobs serve``: the dashboard on waitress, until Ctrl-C or SIGTERM.

Safe by default: it binds 127.0.0.1; any other address needs a password file (HTTP Basic) or an
explicit ``insecure=True``; it answers only requests for the address it binds (and
``localhost`` on a loopback address) or for a name given in ``allow_hosts`` (DNS rebinding).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from durajobs.errors import ValidationError

from .app import make_app
from .security import basic_auth, is_loopback, read_password_file

__all__ = ["serve"]

THREADS = 4
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def serve(
    location: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    read_only: bool = False,
    password_file: str | os.PathLike[str] | None = None,
    insecure: bool = False,
    allow_hosts: Iterable[str] = (),
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard of ``location`` on ``host:port`` until SIGINT or SIGTERM.

    ``port=0`` picks a free port; ``announce`` receives the line with the URL (default: print
    it on stdout). Requests are answered only for ``host``, ``localhost`` when ``host`` is a
    loopback address, and the names in ``allow_hosts`` (others: 400).

    Raises:
        ValidationError: a non-loopback ``host`` without ``password_file`` or ``insecure``; or
            a malformed password file; an empty name in ``allow_hosts``.
        StorageError: the database cannot be opened or is not a durajobs database.
        OSError: the password file cannot be read, or the address cannot be bound.
    """
    if not is_loopback(host) and password_file is None and not insecure:
        raise ValidationError(
            f"--host {host} is reachable from other machines: give --password-file FILE "
            "(HTTP Basic), or --insecure to serve without authentication"
        )
    authorize = None
    if password_file is not None:
        try:
            authorize = basic_auth(read_password_file(password_file))
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
    allowed = [host, *allow_hosts]
    if is_loopback(host):
        allowed += LOOPBACK_NAMES
    try:
        app = make_app(location, read_only=read_only, authorize=authorize, allowed_hosts=allowed)
    except ValueError as exc:
        raise ValidationError(f"--allow-host: {exc}") from None
    try:
        app.check()
        from waitress.server import create_server

        server: Any = create_server(app, host=host, port=port, threads=THREADS, ident="durajobs")
        announce = announce or _print
        for bound_host, bound_port in _addresses(server):
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            mode = " (read-only)" if read_only else ""
            announce(f"durajobs dashboard{mode} on http://{shown}:{bound_port}/ (Ctrl-C to stop)")
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            server.run()
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM: the way to stop
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.close()
    finally:
        app.close()


def _addresses(server: Any) -> list[tuple[str, int]]:
    """The (host, port) pairs waitress listens on (one socket, or several for a name)."""
    if hasattr(server, "effective_listen"):
        return [(str(h), int(p)) for h, p in server.effective_listen]
    return [(str(server.effective_host), int(server.effective_port))]


def _print(line: str) -> None:
    print(line, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
