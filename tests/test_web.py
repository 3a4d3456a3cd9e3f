"""The dashboard through its WSGI interface (no server): pages, filters, keyset pages, escaping,
the cross-site matrix, read-only, authentication, bulk caps, live polling, and mounting under a
prefix in Flask and FastAPI. Real databases made through ``durajobs.Jobs``: a SQLite file, and
for the ``both_stores`` tests a database of the session's PostgreSQL cluster as well.
"""

from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from wsgiref.util import setup_testing_defaults

import attrs
import pytest

pytest.importorskip("jinja2")

from durajobs import Continuous, Debounce, FakeClock, Jobs, Task, every
from durajobs.admin import Admin
from durajobs.cli import main as cli_main
from durajobs.errors import ValidationError
from durajobs.web import BULK_CAP, basic_auth, make_app, read_password_file
from durajobs.web.app import Dashboard
from durajobs.web.security import CSP, is_loopback, same_origin

HOSTILE_ID = "<script>alert(1)</script>"
HOSTILE_STATE = '</script><script>alert("state")</script>'


# -- the application and its data -----------------------------------------------------------


@attrs.define
class Counter:
    n: int = 0
    note: str = ""


@attrs.define
class Event:
    value: str


def registry() -> dict[str, Any]:
    def tick(ctx: Any) -> None:
        if ctx.id.startswith("broken"):
            raise ValueError(f"tick failed for {ctx.id}")
        ctx.state = Counter(ctx.state.n + 1, ctx.state.note)

    def deliver(ctx: Any) -> None:
        pass

    def on_order(event: Event, ctx: Any) -> None:
        ctx.state = Counter(0, event.value) if ctx.state is None else ctx.state
        ctx.schedule("1 hour")

    def ship(ctx: Any) -> None:
        if ctx.id.startswith("bad"):
            raise RuntimeError(f"warehouse rejected {ctx.id}")
        ctx.state = Counter(ctx.state.n + 1, ctx.state.note)

    return {
        "refresher": Continuous(state=Counter, schedule=every("30 minutes"), execute=tick),
        "hooks": Debounce(event=Event, execute=deliver, flush_after="10 minutes"),
        "orders": Task(state=Counter, event=Event, on_event=on_order, execute=ship),
    }


@contextmanager
def jobs_on(db: Path | str) -> Iterator[Jobs]:
    with Jobs(db, registry(), clock=FakeClock(time.time())) as jobs:
        yield jobs


def populate(db: Path | str) -> None:
    """Continuous x3, a Debounce batch, Tasks: scheduled, parked x2, idle, and a hostile one."""
    with jobs_on(db) as jobs:
        refresher = jobs.continuous("refresher")
        for user in ("user-1", "user-2", "user-10"):
            refresher.start(user, Counter())
        hooks = jobs.debounce("hooks")
        hooks.add("repo-1", Event("push"))
        hooks.add("repo-1", Event("pull_request"))
        orders = jobs.task("orders")
        orders.send("o-1", Event("placed"))
        for bad in ("bad-1", "bad-2"):
            orders.send(bad, Event("placed"))
            orders.trigger(bad)  # execute raises, no retry: parked ("failed")
        orders.send("o-idle", Event("placed"))
        orders.trigger("o-idle")
        orders.send(HOSTILE_ID, Event(HOSTILE_STATE))


@pytest.fixture
def db(new_database: Path | str) -> Path | str:
    """The sample database: a file, or (the ``[postgres]`` run of a ``both_stores`` test) a
    database of the session's cluster."""
    populate(new_database)
    return new_database


# -- a WSGI client ---------------------------------------------------------------------------


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]
    text: str

    def links(self) -> list[str]:
        return Links.of(self.text)


class Client:
    """Calls a WSGI app directly, as a browser on ``http://127.0.0.1`` would."""

    def __init__(self, app: Any, script_name: str = "") -> None:
        self.app = app
        self.script_name = script_name

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | str = "",
        form: list[tuple[str, str]] | dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        body = urlencode(form or {}).encode()
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": self.script_name,
            "PATH_INFO": path,
            "QUERY_STRING": query if isinstance(query, str) else urlencode(query),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/x-www-form-urlencoded",
        }
        setup_testing_defaults(environ)
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        seen: dict[str, Any] = {}

        def start_response(status: str, response_headers: list[tuple[str, str]]) -> None:
            seen["status"] = int(status.split(maxsplit=1)[0])
            seen["headers"] = dict(response_headers)

        chunks = self.app(environ, start_response)
        text = b"".join(chunks).decode()
        return Answer(seen["status"], seen["headers"], text)

    def get(self, path: str, query: dict[str, Any] | str = "", **headers: str) -> Answer:
        return self.request("GET", path, query, headers=headers)

    def post(
        self, path: str, form: list[tuple[str, str]] | dict[str, str], **headers: str
    ) -> Answer:
        headers = {"Sec-Fetch-Site": "same-origin", **headers}
        return self.request("POST", path, form=form, headers=headers)


class Links(HTMLParser):
    """Every href, hx-get and form action of a page (HTML-unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "hx-get", "action", "src") and value is not None:
                self.found.append(value)

    @classmethod
    def of(cls, html: str) -> list[str]:
        parser = cls()
        parser.feed(html)
        return parser.found


@pytest.fixture
def app(db: Path | str) -> Iterator[Dashboard]:
    dashboard = make_app(db)
    yield dashboard
    dashboard.close()


@pytest.fixture
def client(app: Dashboard) -> Client:
    return Client(app)


def ids_on(answer: Answer) -> list[str]:
    """Instance ids linked from a page, in order (unique)."""
    found = []
    for link in answer.links():
        parts = urlsplit(link)
        if parts.path.endswith("/instance"):
            found.append(parse_qs(parts.query)["id"][0])
    return list(dict.fromkeys(found))


def status_of(client: Client, instance_id: str) -> str:
    page = client.get("/instance", {"id": instance_id})
    match = re.search(r'<span class="status status-([a-z]+)">', page.text)
    assert match, page.text
    return match.group(1)


# -- pages -----------------------------------------------------------------------------------


@pytest.mark.both_stores
def test_every_page_renders(client: Client) -> None:
    overview = client.get("/")
    assert overview.status == 200
    assert "Last hour, per minute" in overview.text
    assert "Last day, per hour" in overview.text
    assert "<svg" in overview.text
    assert '<rect class="steps"' in overview.text
    assert "Next alarms" in overview.text
    assert "Overdue alarms" in overview.text
    assert "refresher" in overview.text
    assert "hooks" in overview.text
    assert client.get("/instances").status == 200
    failed = client.get("/failed")
    assert ids_on(failed) == ["task:orders:bad-1", "task:orders:bad-2"]
    health = client.get("/health")
    assert health.status == 200
    assert ("integrity" in health.text) or ("schema version" in health.text)  # SQLite / PG
    assert "PARKED" not in health.text
    assert "WARN" in health.text  # two parked instances
    for instance_id in ("continuous:refresher:user-1", "debounce:hooks:repo-1", "task:orders:o-1"):
        page = client.get("/instance", {"id": instance_id})
        assert page.status == 200, page.text
        assert "History" in page.text
        assert "State" in page.text
    assert "Pending batch" in client.get("/instance", {"id": "debounce:hooks:repo-1"}).text
    assert "Next execute" in client.get("/instance", {"id": "task:orders:o-1"}).text


@pytest.mark.both_stores
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd (Linux)")
def test_an_ended_threads_connection_closes_with_it(client: Client) -> None:
    """A server that starts a thread per request (Flask's and Django's development servers):
    each request thread's connection closed with it (they stayed open until close())."""
    assert client.get("/").status == 200  # the owner's connection is open

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = descriptors()
    for _ in range(60):
        thread = threading.Thread(target=client.get, args=("/instances",))
        thread.start()
        thread.join()
    assert descriptors() - before <= 2  # not one (or more) per request thread
    assert client.get("/").status == 200


@pytest.mark.both_stores
def test_instance_page_shows_error_traceback_and_timeline(client: Client) -> None:
    page = client.get("/instance", {"id": "task:orders:bad-1"}).text
    assert "RuntimeError: warehouse rejected bad-1" in page
    assert "<details><summary>Traceback</summary>" in page
    assert "Traceback (most recent" in page
    assert "job.parked" in page
    assert "job.failed" in page
    assert "attempt 1" in page
    assert "status-failed" in page
    assert ">failed<" in page
    assert 'value="retry"' in page


@pytest.mark.both_stores
def test_unknown_and_malformed_instances(client: Client) -> None:
    assert client.get("/instance", {"id": "task:orders:nope"}).status == 404
    assert client.get("/instance", {"id": "nonsense"}).status == 400
    assert client.get("/nowhere").status == 404
    assert client.post("/", {}).status == 405
    assert client.get("/static/../app.py").status == 404
    assert client.get("/static/").status == 404
    assert client.get("/instances", {"status": "weird"}).status == 400
    assert client.get("/instances", {"limit": "0"}).status == 400
    assert client.get("/instances", {"sort": "alarm", "after": "garbage"}).status == 400


@pytest.mark.both_stores
def test_a_nul_character_in_any_field_is_a_bad_request(client: Client) -> None:
    """No store holds a NUL in text (PostgreSQL refuses it outright): 400, never 503."""
    for path, query in (
        ("/instances", {"q": "\x00"}),
        ("/instances", {"job": "orders\x00"}),
        ("/instances", {"error": "x\x00"}),
        ("/instances", {"after": "task:orders:a\x00"}),
        ("/failed", {"q": "bad\x00"}),
        ("/instance", {"id": "task:t:a\x00b"}),
        ("/instance", {"id": "task:orders:o-1", "x\x00": "1"}),
    ):
        answer = client.get(path, query)
        assert answer.status == 400, (path, query, answer.text)
        assert "NUL character" in answer.text
    for form in (
        {"id": "task:orders:o-1\x00", "action": "trigger"},
        {"id": "task:orders:o-1", "action": "terminate", "reason": "bye\x00"},
    ):
        assert client.post("/action", form).status == 400, form
    refused = client.post("/bulk", [("action", "retry"), ("confirm", "1"), ("id", "task:o:\x00")])
    assert refused.status == 400
    assert status_of(client, "task:orders:o-1") == "active"  # nothing was terminated


def test_security_headers_everywhere(client: Client) -> None:
    for answer in (
        client.get("/"),
        client.get("/nowhere"),
        client.get("/static/dashboard.css"),
        client.post(
            "/action",
            {"id": "task:orders:o-1", "action": "trigger"},
            **{"Sec-Fetch-Site": "cross-site"},
        ),
    ):
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in CSP
    assert "'unsafe-inline'" not in CSP


def test_no_inline_script_or_style(client: Client) -> None:
    for path, query in (("/", ""), ("/instances", ""), ("/instance", "id=task:orders:bad-1")):
        html = client.get(path, query).text
        assert " style=" not in html
        assert "<style" not in html
        for script in re.findall(r"<script[^>]*>(.*?)</script>", html, re.S):
            assert script == ""  # only <script src=...></script>
        assert not re.search(r"\son[a-z]+=", html)  # no onclick= handlers
        assert "hx-on" not in html


def test_static_files_ship_in_the_package(client: Client) -> None:
    htmx = client.get("/static/htmx.min.js")
    assert htmx.status == 200
    assert "javascript" in htmx.headers["Content-Type"]
    assert htmx.text.startswith("/*! htmx.org 2.")
    assert "0BSD" in htmx.text.splitlines()[0]
    assert client.get("/static/dashboard.js").status == 200
    assert client.get("/static/htmx.LICENSE").status == 200


# -- lists -----------------------------------------------------------------------------------


@pytest.mark.both_stores
def test_filters_live_in_the_url(client: Client) -> None:
    def ids(**query: str) -> list[str]:
        answer = client.get("/instances", query)
        assert answer.status == 200, answer.text
        return ids_on(answer)

    everything = ids()
    assert len(everything) == 9
    assert everything == sorted(everything)
    assert ids(kind="continuous") == [
        "continuous:refresher:user-1", "continuous:refresher:user-10", "continuous:refresher:user-2"
    ]  # fmt: skip
    assert ids(job="hooks") == ["debounce:hooks:repo-1"]
    assert ids(status="failed") == ["task:orders:bad-1", "task:orders:bad-2"]
    assert ids(status="idle") == ["task:orders:o-idle"]
    assert ids(q="user-1") == ["continuous:refresher:user-1", "continuous:refresher:user-10"]
    assert ids(q="task:orders:bad") == ["task:orders:bad-1", "task:orders:bad-2"]
    assert ids(kind="task", job="orders", q="o-") == ["task:orders:o-1", "task:orders:o-idle"]
    assert ids(error="WAREHOUSE rejected bad-2") == ["task:orders:bad-2"]
    assert ids(error="100%_") == []  # LIKE wildcards are literal
    alarmed = ids(sort="alarm")
    assert "task:orders:o-idle" not in alarmed
    assert len(alarmed) >= 5
    # The form shows the filters it was given, so the URL is the whole state (bookmarkable).
    page = client.get("/instances", {"kind": "task", "error": "warehouse"}).text
    assert '<option value="task" selected>' in page
    assert 'value="warehouse"' in page


@pytest.mark.both_stores
def test_job_filter_offers_the_known_jobs_and_matches_exactly(client: Client) -> None:
    page = client.get("/instances").text
    assert '<input name="job"' not in page  # no free text that silently matches nothing
    select = re.search(r'<select name="job">(.*?)</select>', page, re.S)
    assert select, page
    groups = re.findall(r'<optgroup label="(\w+)">(.*?)</optgroup>', select.group(1), re.S)
    assert [(kind, re.findall(r'value="(\w+)"', options)) for kind, options in groups] == [
        ("continuous", ["refresher"]), ("debounce", ["hooks"]), ("task", ["orders"])
    ]  # fmt: skip
    chosen = client.get("/instances", {"job": "orders"})
    assert '<option value="orders" selected>' in chosen.text
    assert {i.rsplit(":", 1)[0] for i in ids_on(chosen)} == {"task:orders"}
    unknown = client.get("/instances", {"job": "order"})  # exact: no prefix match
    assert ids_on(unknown) == []
    assert '<option value="order" selected>order (no instances)</option>' in unknown.text
    failed = client.get("/failed").text
    assert '<select name="job">' in failed


def test_known_jobs_visits_each_job_once(tmp_path: Path) -> None:
    from durajobs.web.app import known_jobs

    names = ["a", "a-b", "a;b", "ab", "a\U0010ffff", "é"]
    db = tmp_path / "names.db"
    orders = registry()["orders"]
    with Jobs(db, dict.fromkeys(names, orders)) as jobs:
        for name in names:
            for user in ("1", "2", "\U0010ffff", "\U0010ffff;x", "~"):
                jobs.task(name).send(user, Event("x"))
    with Admin(db) as admin:
        found = known_jobs(admin)
        assert found == [("task", name) for name in sorted(names)]
        assert known_jobs(admin, limit=2) == [("task", "a"), ("task", "a-b")]  # id order


@pytest.mark.both_stores
def test_the_list_says_how_it_is_ordered(client: Client) -> None:
    by_id = client.get("/instances", {"kind": "continuous"})
    assert ids_on(by_id) == [
        "continuous:refresher:user-1", "continuous:refresher:user-10", "continuous:refresher:user-2"
    ]  # fmt: skip
    assert "by id as text: user-10 comes before user-2" in by_id.text
    assert "by next alarm" in client.get("/instances", {"sort": "alarm"}).text


@pytest.mark.both_stores
def test_keyset_pagination_walks_every_instance_once(client: Client) -> None:
    for order in ("", "alarm"):
        expected = ids_on(client.get("/instances", {"sort": order, "limit": "100"}))
        seen: list[str] = []
        query: dict[str, str] = {"sort": order, "limit": "3"}
        for _ in range(10):
            answer = client.get("/instances", query)
            seen += ids_on(answer)
            next_links = [
                link for link in answer.links() if "after=" in link and "fragment" not in link
            ]
            if not next_links:
                break
            query = {k: v[0] for k, v in parse_qs(urlsplit(next_links[0]).query).items()}
            assert "offset" not in query
        assert seen == expected
        assert len(seen) == len(set(seen))


# -- escaping --------------------------------------------------------------------------------


@pytest.mark.both_stores
def test_hostile_id_and_state_are_escaped(client: Client) -> None:
    hostile = f"task:orders:{HOSTILE_ID}"
    pages = [
        client.get("/instances"),
        client.get("/instances", {"q": HOSTILE_ID}),
        client.get("/instance", {"id": hostile}),
        client.get("/"),
        client.get("/instance", {"id": "task:orders:<b>nope"}),  # echoed in the 404
    ]
    for page in pages:
        assert "<script>alert" not in page.text
        assert "</script><script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0].text
    detail = pages[2].text
    assert pages[2].status == 200
    assert "&lt;/script&gt;&lt;script&gt;alert(" in detail  # the state, escaped
    assert ids_on(pages[1]) == [hostile]


def test_no_password_in_any_page(pg_url: str) -> None:
    """On PostgreSQL, the location's password is shown on no page."""
    populate(pg_url)
    app = make_app(pg_url)
    try:
        password = pg_url.split(":")[2].split("@", maxsplit=1)[0]
        for path in ("/", "/instances", "/failed", "/health"):
            answer = Client(app).get(path)
            assert answer.status == 200, path
            assert password not in answer.text
    finally:
        app.close()


# -- actions ---------------------------------------------------------------------------------


@pytest.mark.both_stores
def test_retry_from_the_instance_page(client: Client) -> None:
    assert status_of(client, "task:orders:bad-1") == "failed"
    answer = client.post("/action", {"id": "task:orders:bad-1", "action": "retry"})
    assert answer.status == 303
    location = answer.headers["Location"]
    assert location.startswith("/instance?")
    assert "done=retry" in location
    page = client.get("/instance", urlsplit(location).query).text
    assert "Retry requested" in page
    assert status_of(client, "task:orders:bad-1") != "failed"


@pytest.mark.both_stores
def test_terminate_and_refusals(client: Client) -> None:
    answer = client.post(
        "/action", {"id": "task:orders:o-1", "action": "terminate", "reason": "<i>bye</i>"}
    )
    assert answer.status == 303
    assert answer.headers["Location"] == "/instance?id=task%3Aorders%3Ao-1&done=terminate"
    page = client.get("/instance", urlsplit(answer.headers["Location"]).query).text
    assert "status-purged" in page
    assert page.count('class="notice"') == 1  # one banner says it is gone
    assert "job.terminated" in page
    assert "<i>bye" not in page
    refused = client.post("/action", {"id": "continuous:refresher:user-1", "action": "clear"})
    assert refused.status == 409
    assert "debounce" in refused.text
    assert client.post("/action", {"id": "task:orders:o-idle", "action": "explode"}).status == 400
    assert client.post("/action", {"id": "task:orders:zz", "action": "trigger"}).status == 404


@pytest.mark.both_stores
def test_finished_instances_and_the_terminate_reason(client: Client) -> None:
    reason = "<i>no longer needed</i>"
    form = {"id": "task:orders:o-1", "action": "terminate", "reason": reason}
    assert client.post("/action", form).status == 303
    page = client.get("/instance", {"id": "task:orders:o-1"}).text
    notice = re.search(r'<p class="notice" role="status">(.*?)</p>', page, re.S)
    assert notice, page
    assert "gone: terminated" in notice.group(1)
    assert "&lt;i&gt;no longer needed&lt;/i&gt;" in notice.group(1)  # shown, escaped
    timeline = page.split('<ol class="timeline">')[1]
    assert "reason: <q>&lt;i&gt;no longer needed&lt;/i&gt;</q>" in timeline
    assert "<i>no" not in page
    assert "task:orders:o-1" not in ids_on(client.get("/instances"))  # not a live one
    for status in ("terminated", "purged"):
        gone = client.get("/instances", {"status": status})
        assert gone.status == 200, gone.text
        assert ids_on(gone) == ["task:orders:o-1"]
        assert "&lt;i&gt;no longer needed&lt;/i&gt;" in gone.text
        assert f'<option value="{status}" selected>' in gone.text
    narrowed = client.get("/instances", {"status": "terminated", "kind": "task", "job": "orders",
                                         "q": "o-"})  # fmt: skip
    assert ids_on(narrowed) == ["task:orders:o-1"]
    assert ids_on(client.get("/instances", {"status": "terminated", "kind": "debounce"})) == []
    for wrong in ({"error": "x"}, {"sort": "alarm"}, {"q": "o-"}):  # a user id needs a job
        answer = client.get("/instances", {"status": "terminated", **wrong})
        assert answer.status == 400, (wrong, answer.text)
    poll = urlsplit(poll_url(client.get("/instances", {"status": "terminated"})))
    assert client.get(poll.path, poll.query).status == 204


@pytest.mark.both_stores
def test_a_parked_instance_shows_its_failed_attempts(client: Client) -> None:
    """``attempt`` is the next attempt; a parked instance has none: its failed ones show."""
    listed = client.get("/failed").text
    row = re.search(r"task:orders:bad-1</a></td>(.*?)</tr>", listed, re.S)
    assert row, listed
    assert '<td class="n opt">1 failed</td>' in row.group(1)
    page = client.get("/instance", {"id": "task:orders:bad-1"}).text
    assert re.search(r"<dt>Failed attempts</dt><dd>1 ", page)
    assert "Next attempt" not in page
    assert "attempt 2" not in page  # the history says attempt 1 failed; nothing says 2
    live = client.get("/instance", {"id": "task:orders:o-1"}).text
    assert "<dt>Next attempt</dt><dd>1</dd>" in live


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1"}, False),
        ({"Origin": "http://127.0.0.1"}, True),  # no Fetch Metadata: Origin against Host
        ({"Origin": "http://127.0.0.1:80"}, True),
        ({"Origin": "http://evil.example"}, False),
        ({"Origin": "http://127.0.0.1:8081"}, False),
        ({"Origin": "https://127.0.0.1"}, False),
        ({"Origin": "null"}, False),
        ({}, False),  # neither header: refused (documented)
    ],
)
def test_cross_site_matrix(client: Client, headers: dict[str, str], allowed: bool) -> None:
    answer = client.request(
        "POST", "/action", form={"id": "task:orders:o-1", "action": "trigger"}, headers=headers
    )
    assert answer.status == (303 if allowed else 403), answer.text
    if not allowed:
        assert "cross-site request refused" in answer.text


def test_same_origin_with_a_port_in_host() -> None:
    environ = {"HTTP_HOST": "dash.example:8443", "HTTP_ORIGIN": "https://dash.example:8443"}
    assert same_origin(environ)
    https = {"wsgi.url_scheme": "https", "HTTP_HOST": "dash.example"}
    assert same_origin({**https, "HTTP_ORIGIN": "https://dash.example"})
    assert same_origin({**https, "HTTP_ORIGIN": "https://dash.example:443"})
    assert not same_origin({**https, "HTTP_ORIGIN": "http://dash.example"})
    assert not same_origin({**https, "HTTP_ORIGIN": "https://evil.example"})
    assert same_origin({"HTTP_HOST": "[::1]:8080", "HTTP_ORIGIN": "http://[::1]:8080"})


@pytest.mark.both_stores
def test_bulk_confirm_then_act_with_a_cap(client: Client) -> None:
    ids = ["task:orders:bad-1", "task:orders:bad-2"]
    confirm = client.post("/bulk", [("action", "retry"), *(("id", i) for i in ids)])
    assert confirm.status == 200
    assert "Retry 2 instance(s)?" in confirm.text
    assert status_of(client, ids[0]) == "failed"  # nothing happened yet
    done = client.post("/bulk", [("action", "retry"), ("confirm", "1"), *(("id", i) for i in ids)])
    assert done.status == 200
    assert "2 done" in done.text
    assert [status_of(client, i) for i in ids] != ["failed", "failed"]
    too_many = [("id", f"task:orders:x-{n}") for n in range(BULK_CAP + 1)]
    capped = client.post("/bulk", [("action", "terminate"), ("confirm", "1"), *too_many])
    assert capped.status == 400
    assert f"at most {BULK_CAP}" in capped.text
    assert client.post("/bulk", {"action": "retry"}).status == 400  # nothing selected
    mixed = client.post(
        "/bulk",
        [("action", "clear"), ("confirm", "1"), ("id", "debounce:hooks:repo-1"),
         ("id", "task:orders:o-1")],
    )  # fmt: skip
    assert "1 done, 1 refused" in mixed.text


def test_bulk_all_parked_takes_at_most_the_cap(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    with jobs_on(db) as jobs:
        orders = jobs.task("orders")
        for n in range(BULK_CAP + 5):
            orders.send(f"bad-{n:03d}", Event("placed"))
            orders.trigger(f"bad-{n:03d}")
    app = make_app(db)
    client = Client(app)
    confirm = client.post("/bulk", {"action": "retry", "all_failed": "1"})
    assert f"Retry {BULK_CAP} instance(s)?" in confirm.text
    assert f"Only the first {BULK_CAP}" in confirm.text
    assert confirm.text.count('name="id"') == BULK_CAP
    app.close()


# -- read-only and authentication ------------------------------------------------------------


@pytest.mark.both_stores
def test_read_only_hides_buttons_and_refuses_posts(db: Path | str) -> None:
    app = make_app(db, read_only=True)
    client = Client(app)
    for path, query in (("/", ""), ("/instances", ""), ("/failed", ""),
                        ("/instance", "id=task:orders:bad-1")):  # fmt: skip
        page = client.get(path, query)
        assert page.status == 200
        assert 'method="post"' not in page.text
        assert "read-only" in page.text
    for path in ("/action", "/bulk"):
        answer = client.post(path, {"id": "task:orders:bad-1", "action": "retry", "confirm": "1"})
        assert answer.status == 403
    assert status_of(client, "task:orders:bad-1") == "failed"
    app.close()


def test_authorize_hook_is_asked_on_every_request(db: Path) -> None:
    roles = {"Bearer admin": "admin", "Bearer viewer": "read_only"}
    app = make_app(db, authorize=lambda environ: roles.get(environ.get("HTTP_AUTHORIZATION", "")))
    client = Client(app)
    refused = client.get("/")
    assert refused.status == 401
    assert "Basic" in refused.headers["WWW-Authenticate"]
    assert client.get("/static/dashboard.css").status == 401
    assert client.get("/", Authorization="Bearer admin").status == 200
    viewer = client.get("/failed", Authorization="Bearer viewer")
    assert viewer.status == 200
    assert 'method="post"' not in viewer.text
    form = {"id": "task:orders:bad-1", "action": "retry"}
    assert client.post("/action", form, Authorization="Bearer viewer").status == 403
    assert client.post("/action", form, Authorization="Bearer admin").status == 303
    assert client.post("/action", form).status == 401
    app.close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_from_a_password_file(db: Path, tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text("# operators\nalice:s3cret:with:colons\n\n  bob : hunter2  \n")
    users = read_password_file(passwords)
    assert users == {"alice": "s3cret:with:colons", "bob": "hunter2"}
    app = make_app(db, authorize=basic_auth(users))
    client = Client(app)
    assert client.get("/", Authorization=basic("alice", "s3cret:with:colons")).status == 200
    assert client.get("/", Authorization=basic("bob", "hunter2")).status == 200
    for wrong in (basic("alice", "s3cret"), basic("mallory", "hunter2"), basic("bob", ""),
                  "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode(),
                  "Bearer hunter2", ""):  # fmt: skip
        assert client.get("/", Authorization=wrong).status == 401, wrong
    app.close()


def test_password_file_errors_name_the_line_not_the_secret(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("alice:ok\njust-a-secret-word\n")
    with pytest.raises(ValueError, match=r"bad:2") as caught:
        read_password_file(bad)
    assert "just-a-secret-word" not in str(caught.value)
    empty = tmp_path / "empty"
    empty.write_text("# nobody\n")
    with pytest.raises(ValueError, match="no user"):
        read_password_file(empty)
    with pytest.raises(ValueError):
        basic_auth({})


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        assert not is_loopback(host), host


def test_serve_refuses_a_public_host_without_authentication(db: Path, tmp_path: Path) -> None:
    code = cli_main(["--db", str(db), "serve", "--host", "0.0.0.0", "--port", "0"])
    assert code == 2
    bad = tmp_path / "passwords"
    bad.write_text("no colon here\n")
    code = cli_main(["--db", str(db), "serve", "--host", "0.0.0.0", "--password-file", str(bad)])
    assert code == 2
    missing = cli_main(["--db", str(tmp_path / "missing.db"), "serve", "--port", "0"])
    assert missing == 4  # the database is checked before serving


@contextmanager
def serving(db: Path | str, *args: str) -> Iterator[tuple[str, int]]:
    """``durajobs serve --port 0 ARGS`` as a subprocess: (host, port); SIGTERM must stop it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "durajobs.cli", "--db", str(db), "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server announces itself
        match = re.search(r"http://(127\.0\.0\.1):(\d+)/", line)
        assert match, line + (proc.stderr.read() if proc.stderr else "")
        yield match.group(1), int(match.group(2))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_runs_and_stops_on_sigterm(db: Path) -> None:
    import urllib.request

    with (
        serving(db) as (host, port),
        urllib.request.urlopen(f"http://{host}:{port}/failed", timeout=10) as response,
    ):
        assert response.status == 200
        assert b"task:orders:bad-1" in response.read()


def get_with_host(host: str, port: int, path: str, host_header: str) -> tuple[int, str]:
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host_header)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_serve_answers_only_its_own_host_and_allowed_names(db: Path) -> None:
    """DNS rebinding: a page on rebind.example re-pointed to 127.0.0.1 is same-origin to the
    browser; only its Host header tells, and it is refused."""
    with serving(db, "--allow-host", "dash.example", "--allow-host", "Other.Example") as (
        host, port,
    ):  # fmt: skip
        for name in (f"127.0.0.1:{port}", f"localhost:{port}", "dash.example", "other.example:1"):
            status, text = get_with_host(host, port, "/failed", name)
            assert status == 200, (name, text)
            assert "task:orders:bad-1" in text
        for name in (f"rebind.example:{port}", "127.0.0.1.rebind.example", "dash.example.evil"):
            status, text = get_with_host(host, port, "/failed", name)
            assert status == 400, (name, text)
            assert "task:orders" not in text
            assert "--allow-host" in text
    with serving(db) as (host, port):
        assert get_with_host(host, port, "/", "dash.example")[0] == 400


def test_make_app_with_allowed_hosts_refuses_other_hosts(db: Path) -> None:
    app = make_app(db, allowed_hosts=["127.0.0.1", "Dash.Example", "[::1]"])
    client = Client(app)
    for host in ("127.0.0.1", "127.0.0.1:8080", "dash.example:8443", "DASH.example", "[::1]:80"):
        assert client.get("/", Host=host).status == 200, host
    for host in ("evil.example", "evil.example:8080", "", "[::2]", "0.0.0.0"):
        answer = client.get("/static/dashboard.css", Host=host)
        assert answer.status == 400, host
    # The rebinding page's POST is same-origin to the browser: the Host check refuses it.
    form = {"id": "task:orders:o-1", "action": "terminate"}
    assert client.post("/action", form, Host="evil.example").status == 400
    assert status_of(client, "task:orders:o-1") == "active"
    app.close()
    wildcard = make_app(db, allowed_hosts=["0.0.0.0", "jobs.internal"])
    anywhere = Client(wildcard)
    for host in ("192.168.1.5:8080", "[fe80::1]", "jobs.internal"):
        assert anywhere.get("/static/dashboard.css", Host=host).status == 200, host
    assert anywhere.get("/static/dashboard.css", Host="evil.example").status == 400
    wildcard.close()
    with pytest.raises(TypeError):
        make_app(db, allowed_hosts="dash.example")
    with pytest.raises(ValueError, match="empty"):
        make_app(db, allowed_hosts=["dash.example", " "])


def test_cli_read_path_does_not_import_the_dashboard() -> None:
    code = (
        "import sys, durajobs.cli; print([m for m in ('jinja2', 'waitress') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- live polling ----------------------------------------------------------------------------


def poll_url(page: Answer) -> str:
    match = re.search(r'hx-get="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1).replace("&amp;", "&")


def _quiet_poll(client: Client, path: str, query: str) -> tuple[Any, Any]:
    """A page and the poll of its live region right after. On PostgreSQL the change token is
    the server's next transaction id, which any commit in the cluster moves (an autovacuum's
    ANALYZE of another test's database too): such a poll re-renders, correctly if needlessly;
    so the pair is taken again, a few times, until nothing else committed in between."""
    for _ in range(5):
        page = client.get(path, query)
        url = urlsplit(poll_url(page))
        poll = client.get(url.path, url.query, **{"HX-Request": "true"})
        if poll.status == 204:
            break
    return url, poll


@pytest.mark.both_stores
def test_a_poll_of_an_unchanged_database_swaps_nothing(client: Client, db: Path | str) -> None:
    for path, query in (("/", ""), ("/instances", "kind=task"), ("/failed", ""),
                        ("/instance", "id=task:orders:o-1")):  # fmt: skip
        url, unchanged = _quiet_poll(client, path, query)
        assert url.path == path
        assert "fragment=1" in url.query
        assert "v=" in url.query
        assert unchanged.status == 204
        assert unchanged.text == ""
    page = client.get("/instances", "kind=task")
    url = urlsplit(poll_url(page))
    with jobs_on(db) as jobs:  # another process's commit
        jobs.task("orders").send("o-new", Event("placed"))
    changed = client.get(url.path, url.query, **{"HX-Request": "true"})
    assert changed.status == 200
    assert "task:orders:o-new" in changed.text
    assert "<html" not in changed.text
    assert changed.text.lstrip().startswith('<div id="live"')
    assert 'hx-trigger="every 3s"' in changed.text
    assert "data-live" in changed.text
    # The sender's wake-up (a NOTIFY, posted: its transaction may end after the poll above)
    # moves PostgreSQL's token once more: the next poll may re-render once, then not.
    again = urlsplit(poll_url(changed))
    for _ in range(5):
        answer = client.get(again.path, again.query, **{"HX-Request": "true"})
        if answer.status == 204:
            break
        again = urlsplit(poll_url(answer))
    assert answer.status == 204


@pytest.mark.both_stores
def test_threads_get_their_own_connections(app: Dashboard) -> None:
    client = Client(app)
    statuses: list[int] = []
    admins: set[int] = set()

    def work() -> None:
        for _ in range(5):
            statuses.append(client.get("/instances").status)
        admins.add(id(app.admin()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 20
    assert len(admins) == 4


# -- mounted under a prefix ------------------------------------------------------------------


def crawl(get: Any, start: str, prefix: str, limit: int = 40) -> set[str]:
    """Follow every link of every page from ``start``; all must stay under ``prefix``."""
    seen: set[str] = set()
    queue = [start]
    while queue and len(seen) < limit:
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        status, html = get(url)
        polled = "fragment=1" in url  # a live region's poll: 204 while nothing changed
        assert status == 200 or (polled and status == 204), (url, status, html[:500])
        for link in Links.of(html):
            assert link.startswith(prefix + "/"), (url, link)
            posted = link.endswith(("/action", "/bulk"))  # form actions: POST only
            if "/static/" not in link and not posted and link not in seen:
                queue.append(link)
    return seen


def test_mounted_in_flask_under_a_prefix(db: Path) -> None:
    flask = pytest.importorskip("flask")
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    host = flask.Flask("host")

    @host.get("/")  # type: ignore[untyped-decorator]
    def home() -> str:
        return "the host application"

    dashboard = make_app(db)
    host.wsgi_app = DispatcherMiddleware(host.wsgi_app, {"/jobs": dashboard})
    test = host.test_client()

    def get(url: str) -> tuple[int, str]:
        response = test.get(url)
        return response.status_code, response.get_data(as_text=True)

    seen = crawl(get, "/jobs/", "/jobs")
    assert any(url.startswith("/jobs/instance?") for url in seen)
    assert get("/")[1] == "the host application"
    assert test.get("/jobs/static/htmx.min.js").status_code == 200
    answer = test.post(
        "/jobs/action", data={"id": "task:orders:bad-1", "action": "retry"},
        headers={"Sec-Fetch-Site": "same-origin"},
    )  # fmt: skip
    assert answer.status_code == 303
    assert answer.headers["Location"].startswith("/jobs/instance?")
    dashboard.close()


def test_mounted_in_fastapi_under_a_prefix(db: Path) -> None:
    fastapi = pytest.importorskip("fastapi")
    a2wsgi = pytest.importorskip("a2wsgi")
    from fastapi.testclient import TestClient

    api = fastapi.FastAPI()
    dashboard = make_app(db)
    api.mount("/jobs", a2wsgi.WSGIMiddleware(dashboard))
    with TestClient(api) as test:
        page = test.get("/jobs/failed")
        assert page.status_code == 200
        assert all(link.startswith("/jobs/") for link in Links.of(page.text))
        assert "task:orders:bad-1" in page.text
    dashboard.close()


def test_mounted_in_django_under_a_prefix(db: Path) -> None:
    pytest.importorskip("django")
    code = f"""
import django
from django.conf import settings
settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"], SECRET_KEY="x",
                   MIDDLEWARE=[])
django.setup()
from django.core.wsgi import get_wsgi_application
from durajobs.web import make_app
urlpatterns = []
from durajobs.web import mount
application = mount("/jobs", make_app({str(db)!r}), get_wsgi_application())

from wsgiref.util import setup_testing_defaults
environ = {{"PATH_INFO": "/jobs/instances"}}
setup_testing_defaults(environ)
seen = {{}}
body = b"".join(application(environ, lambda s, h: seen.update(status=s)))
assert seen["status"].startswith("200"), seen
assert b'href="/jobs/instance?id=' in body
environ = {{"PATH_INFO": "/elsewhere"}}
setup_testing_defaults(environ)
b"".join(application(environ, lambda s, h: seen.update(status=s)))
assert seen["status"].startswith("404"), seen  # Django's own answer
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert out.stdout.strip() == "ok", out.stderr


def test_make_app_rejects_a_non_callable_hook(db: Path) -> None:
    with pytest.raises(TypeError):
        make_app(db, authorize="admin")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Admin(db).instances(order="sideways")


def test_activity_charts_read_only_new_periods_and_stay_exact(tmp_path: Path) -> None:
    db = tmp_path / "activity.db"
    start = (time.time() // 60) * 60 - 600
    clock = FakeClock(start)
    with Jobs(db, registry(), clock=clock) as jobs:
        orders = jobs.task("orders")
        orders.send("a", Event("placed"))
        app = make_app(db, clock=clock)
        client = Client(app)

        def totals() -> list[str]:
            return re.findall(r"([\d,]+) steps, ([\d,]+) failures</span>", client.get("/").text)

        before = totals()
        for n in range(3):  # later steps, in later minutes
            clock.advance(90)
            orders.send(f"b-{n}", Event("placed"))
        after = totals()
        with Admin(db, clock=clock) as admin:
            expected = [
                sum(b.steps for b in admin.activity(width=60.0, count=60)),
                sum(b.steps for b in admin.activity(width=3600.0, count=24)),
            ]
        assert [int(steps.replace(",", "")) for steps, _ in after] == expected
        assert int(after[0][0]) > int(before[0][0])
        app.close()
