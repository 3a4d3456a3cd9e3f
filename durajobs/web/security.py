"""Who may see the dashboard and which requests may act: authentication, cross-site checks,
response headers.

Decisions (also in the README):

- *Cross-site requests.* Every POST must come from the dashboard's own pages. With Fetch
  Metadata (``Sec-Fetch-Site``, sent by every current browser to secure origins, localhost
  included) only ``same-origin`` and ``none`` (the user's own action) pass. Without it, the
  ``Origin`` header must name the host the request was sent to (``Host``, its port defaulting
  from the request's scheme), so a proxy in front must pass ``Host`` through. A POST with neither
  header is refused: browsers always send one of them on a POST, so only a non-browser client
  (curl, a script) lacks both, and it can add ``Origin`` itself; refusing costs such a client one
  header and leaves no gap for an old or unusual browser.
- *DNS rebinding.* A page on a name its owner re-points to 127.0.0.1 is same-origin to the
  browser, so the cross-site checks cannot see it; only its ``Host`` header gives it away.
  With ``allowed_hosts`` (``durajobs serve`` always gives them: the address it binds,
  ``localhost`` on a loopback address, and each ``--allow-host``), a request whose ``Host``
  names anything else is refused (400). The port is not compared (a proxy may add or drop it).
  Allowing a wildcard address (``0.0.0.0``, ``::``) allows every address literal, never a
  name: rebinding needs a name. A request without ``Host`` (HTTP/1.0) comes from no browser.
- *Authentication* is the ``authorize(environ)`` hook's: ``"admin"``, ``"read_only"``, or
  ``None`` (refused: 401 with a Basic challenge). ``basic_auth`` builds one from a password file.
- *Headers*: a strict Content-Security-Policy (scripts and styles only from the dashboard's own
  static files, no inline script or style, no framing), ``nosniff``, a same-origin referrer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CSP",
    "SECURITY_HEADERS",
    "Authorize",
    "basic_auth",
    "host_allowed",
    "host_name",
    "is_loopback",
    "read_password_file",
    "same_origin",
]

Authorize = Callable[[dict[str, Any]], str | None]
"""``authorize(environ) -> "admin" | "read_only" | None`` (``None``: refused)."""

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def same_origin(environ: Mapping[str, Any]) -> bool:
    """Whether a request comes from the dashboard's own pages (see the module's decisions)."""
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None:
        return str(site).strip().lower() in ("same-origin", "none")
    origin = environ.get("HTTP_ORIGIN")
    if not origin or origin == "null":
        return False
    parts = urlsplit(str(origin))
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False
    host = environ.get("HTTP_HOST") or (
        f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    )
    scheme = str(environ.get("wsgi.url_scheme", "http"))
    if scheme not in _DEFAULT_PORTS:
        return False
    return _authority(parts.netloc, parts.scheme) == _authority(str(host), scheme)


WILDCARDS = frozenset({"0.0.0.0", "::"})


def host_name(host: str) -> str:
    """The name or address of a ``Host`` header or an allowed host, without its port, in one
    spelling: lower case, an address in its standard form (``[::1]:80`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def host_allowed(environ: Mapping[str, Any], allowed: Collection[str]) -> bool:
    """Whether the request's ``Host`` names one of ``allowed`` (``host_name`` spellings; see
    the module's decisions)."""
    host = environ.get("HTTP_HOST")
    if host is None:
        return True
    name = host_name(str(host))
    if name in allowed:
        return True
    if not WILDCARDS.intersection(allowed):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _authority(netloc: str, scheme: str) -> str:
    """``host:port`` in lower case, with the scheme's default port made explicit."""
    netloc = netloc.strip().lower()
    host, sep, port = netloc.rpartition(":")
    if not sep or "]" in port:  # no port (an IPv6 literal's colons are inside brackets)
        return f"{netloc}:{_DEFAULT_PORTS[scheme]}"
    return f"{host}:{port}"


def basic_auth(users: Mapping[str, str]) -> Authorize:
    """An ``authorize`` hook granting ``"admin"`` to HTTP Basic credentials found in ``users``.

    The user name and the password are compared in constant time (``hmac.compare_digest``),
    against every entry, so the time taken says nothing about which part was wrong.

    Raises:
        ValueError: ``users`` is empty.
    """
    if not users:
        raise ValueError("basic_auth needs at least one user")
    entries = [(name.encode(), secret.encode()) for name, secret in users.items()]

    def authorize(environ: dict[str, Any]) -> str | None:
        scheme, _, token = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (ValueError, binascii.Error):
            return None
        user, sep, password = decoded.partition(b":")
        granted = False
        for name, secret in entries:
            # ``&``, not ``and``: both comparisons always run.
            granted |= hmac.compare_digest(name, user) & hmac.compare_digest(secret, password)
        return "admin" if granted and sep else None

    return authorize


def read_password_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Users and passwords from a file of ``user:password`` lines.

    The first ``:`` ends the user name (a password may contain colons); blank lines and lines
    starting with ``#`` are skipped; surrounding whitespace is not part of a name or password.

    Raises:
        ValueError: a line without ``:``, an empty user name or password, or no user at all
            (the message names the line number, never its content).
        OSError: the file cannot be read.
    """
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as file:
        for number, raw in enumerate(file, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, password = line.partition(":")
            if not sep or not user.strip() or not password.strip():
                raise ValueError(f"{os.fspath(path)}:{number}: expected a line user:password")
            users[user.strip()] = password.strip()
    if not users:
        raise ValueError(f"{os.fspath(path)}: no user:password line")
    return users


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (``127.0.0.1``, ``::1``,
    ``localhost``)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
