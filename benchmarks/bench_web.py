"""The dashboard on a file with a million instances: server time per page.

Theory of operation: the file is made as ``bench_ls.py`` makes it (a sample through the library,
cloned in SQL to N instances with alarms over a day, 10% of tasks idle, 0.1% parked, a few
history records each over the last hour). Each page is then asked of the WSGI application
in process (``make_app(db)(environ, start_response)``): the time is the server's, from the
request to the last byte of HTML -- routing, the ``Admin`` reads and the Jinja2 rendering --
without the network or a browser. Each variant runs ``--repeat`` times after one warm-up
(which opens the thread's connection).

Run: ``python benchmarks/bench_web.py [--instances 1000000] [--history 2] [--db FILE]``
(``--db`` reuses a file made before with ``--keep``).
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from wsgiref.util import setup_testing_defaults

from bench_ls import OUT_DIR, build_sample, clone

from durajobs.web import make_app


def call(app: Any, path: str, query: str = "", **headers: str) -> tuple[int, str]:
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
    setup_testing_defaults(environ)
    environ["wsgi.errors"] = io.StringIO()
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, _headers: seen.append(status)))
    return int(seen[0].split()[0]), body.decode()


def timed(app: Any, path: str, query: str, repeat: int, **headers: str) -> list[float]:
    """Milliseconds per request (after one warm-up request)."""
    status, _ = call(app, path, query, **headers)
    if status not in (200, 204):
        raise SystemExit(f"{path}?{query} answered {status}")
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call(app, path, query, **headers)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def summary(ms: list[float]) -> str:
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ms):8.2f} ms   p95 {p95:8.2f}   max {max(ms):8.2f}"


def next_query(html: str) -> str:
    """The query string of the page's "Next page" link."""
    start = html.index('rel="next"')
    href = html.rfind('href="', 0, start)
    link = html[href + 6 : html.index('"', href + 6)].replace("&amp;", "&")
    return urlsplit(link).query


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=2, help="history records per instance")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--db", type=Path, help="reuse this file (made with --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the database file")
    args = parser.parse_args()

    folder = None
    if args.db:
        db = args.db
    else:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="bench-web-", dir=OUT_DIR))
        db = folder / "durajobs.db"
        now = time.time()
        build_sample(db, now - 600)
        seconds = clone(db, args.instances, args.history, now)
        print(f"made {args.instances:,} instances + {args.history} history each in {seconds:.1f} s")
    print(f"file: {db} ({db.stat().st_size / 1e6:,.0f} MB)")
    app = make_app(db)
    try:
        _, first = call(app, "/instances")
        pages = [
            ("instances, first page (by id)", "/instances", ""),
            ("instances, next page", "/instances", next_query(first)),
            ("instances, page 2,000 deep", "/instances", "after=task:orders:u00500000"),
            ("kind=task", "/instances", "kind=task"),
            ("job=orders", "/instances", "job=orders"),
            ("kind+job, id prefix", "/instances", "kind=task&job=orders&q=u0042"),
            ("instance id prefix", "/instances", "q=continuous:token_refresher:u0099"),
            ("status=failed", "/instances", "status=failed"),
            ("failed page", "/failed", ""),
            ("by next alarm", "/instances", "sort=alarm"),
            ("status=idle (row by row)", "/instances", "status=idle"),
            ("error text (row by row)", "/instances", "error=warehouse"),
        ]
        _, failed = call(app, "/failed")
        start = failed.index('href="/instance?id=') + len('href="/instance?')
        pages.append(("instance page", "/instance", failed[start : failed.index('"', start)]))
        print(f"\nserver time per request, {args.repeat} runs each, {args.instances:,} instances:")
        for label, path, query in pages:
            print(f"  {label:<32} {summary(timed(app, path, query, args.repeat))}")
        _, html = call(app, "/instances")
        poll = html[html.index('hx-get="') + 8 :].split('"', 1)[0].replace("&amp;", "&")
        url = urlsplit(poll)
        assert "fragment" in parse_qs(url.query)
        ms = timed(app, url.path, url.query, args.repeat * 10, **{"HX-Request": "true"})
        print(f"  {'a poll, nothing changed (204)':<32} {summary(ms)}")
        fresh = make_app(db)  # nothing cached: counts every instance, reads a day of history
        t0 = time.perf_counter()
        call(fresh, "/")
        print(f"  {'overview, first view':<32} {(time.perf_counter() - t0) * 1000:8.2f} ms")
        fresh.close()
        overview = timed(app, "/", "", max(3, args.repeat // 5))
        print(f"  {'overview, later views':<32} {summary(overview)}")
    finally:
        app.close()
        if folder is not None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder is not None:
            print(f"kept {db}", file=sys.stderr)


if __name__ == "__main__":
    main()
