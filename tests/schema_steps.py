"""Databases as older durajobs versions wrote them, for the tests of reading and migrating an
older schema: ``DOWN[n]`` turns a database of schema ``n + 1`` into one of schema ``n``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import apsw

from durajobs.stores.sql import SCHEMA_VERSION

DOWN: dict[int, list[str]] = {
    5: ["DROP TABLE paused", "DROP TABLE flow_buckets"],  # 6 added flow control's tables
    4: ["DROP INDEX instances_status", "DROP INDEX instances_erred"],  # 5: the gauges' indexes
    3: [f"ALTER TABLE {t} DROP COLUMN version" for t in ("instances", "inbox")],  # 4: versions
}
assert max(DOWN) == SCHEMA_VERSION - 1, "a new schema adds its step down to DOWN"


def downgrade(
    location: str, schema: int, server: Any = None, *, start: int = SCHEMA_VERSION
) -> None:
    """Take a database of schema ``start`` down to ``schema``, step by step (``server``: the
    test's PostgreSQL server, for a URL)."""
    for version in range(start - 1, schema - 1, -1):
        if "://" not in location:
            conn = apsw.Connection(location)
            for statement in [*DOWN[version], f"PRAGMA user_version={version}"]:
                conn.execute(statement)
            conn.close()
            continue
        name = urlsplit(location).path.lstrip("/")
        for statement in DOWN[version]:
            server.admin_execute(statement, name)
        server.admin_execute(f"DELETE FROM durajobs_schema WHERE version > {version}", name)


def schema_of(location: str, server: Any = None) -> tuple[int, list[str]]:
    """The database's schema version and the names of its tables and indexes."""
    if "://" not in location:
        conn = apsw.Connection(location, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            version = conn.execute("PRAGMA user_version").fetchall()[0][0]
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        finally:
            conn.close()
        return int(version), sorted(names)
    name = urlsplit(location).path.lstrip("/")
    version = server.admin_query("SELECT max(version) FROM durajobs_schema", name)[0][0]
    query = (
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' UNION ALL "
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
    )
    return int(version), sorted(r[0] for r in server.admin_query(query, name))
