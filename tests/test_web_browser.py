"""The dashboard in a real headless Chromium (Python playwright), against ``durajobs serve``
started as a real subprocess on a free port.

Any console error fails a test (a CSP violation is one). Screenshots go to the test's temporary
folder, or to ``$DURAJOBS_SCREENSHOTS`` when set. Without playwright or ``/usr/bin/chromium``
the tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jinja2")

from test_web import HOSTILE_ID, Counter, jobs_on, populate

CHROMIUM = os.environ.get("DURAJOBS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip, or fail under CI: there the browser tests must run."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError:  # pragma: no cover
    sync_playwright = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        unavailable("playwright is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no Chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``durajobs serve --port 0`` on a populated file: (base URL, database path)."""
    db = tmp_path_factory.mktemp("served") / "jobs.db"
    populate(db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "durajobs.cli", "--db", str(db), "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server announces its URL once it listens
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, line + (proc.stderr.read() if proc.stderr else "")
        yield match.group(0), db
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DURAJOBS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page; any console error or page error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    opened.on("console", on_console)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
    opened.set_default_timeout(10_000)
    yield opened
    context.close()
    assert errors == [], errors


def test_overview_and_instance_pages(page: Page, served: tuple[str, Path], shots: Path) -> None:
    base, _ = served
    page.goto(base)
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator("figure.chart svg")).to_have_count(2)
    expect(page.locator(".tiles .tile").first).to_contain_text("instances")
    expect(page.locator("#live-toggle")).to_have_text("Live: on")  # dashboard.js ran
    page.screenshot(path=str(shots / "overview.png"), full_page=True)
    page.get_by_role("link", name="task:orders:o-1").first.click()
    expect(page.locator("h1.id")).to_have_text("task:orders:o-1")
    expect(page.locator("pre.json")).to_contain_text('"note": "placed"')
    expect(page.locator(".timeline li").first).to_be_visible()
    page.screenshot(path=str(shots / "instance.png"), full_page=True)
    # The hostile id is shown as text, never run.
    page.goto(base + "instances?kind=task")
    expect(page.get_by_role("link", name=HOSTILE_ID)).to_be_visible()


def test_retry_a_parked_instance(page: Page, served: tuple[str, Path]) -> None:
    base, _ = served
    page.goto(base + "failed")
    page.get_by_role("link", name="task:orders:bad-1").click()
    status = page.locator(".title-row .status")
    expect(status).to_have_text("failed")
    expect(page.locator(".error-card")).to_contain_text("warehouse rejected bad-1")
    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".notice")).to_contain_text("Retry requested")
    expect(status).not_to_have_text("failed")


def test_the_failed_page_has_a_tab_of_failing_instances(
    page: Page, served: tuple[str, Path]
) -> None:
    """A Continuous instance whose run failed and was skipped stays running: the Failed page's
    "Failing" tab lists it, and its page says so (issue 20)."""
    base, db = served
    with jobs_on(db) as jobs:
        jobs.continuous("refresher").start("broken-1", Counter())  # tick raises: skipped
    page.goto(base + "failed")
    expect(page.get_by_role("link", name="continuous:refresher:broken-1")).to_have_count(0)
    page.get_by_role("link", name="Failing", exact=True).click()
    expect(page).to_have_url(re.compile(r"/failed\?show=failing$"))
    page.get_by_role("link", name="continuous:refresher:broken-1").click()
    expect(page.locator(".title-row .status")).to_have_text(["running", "failing"])
    expect(page.locator(".notice")).to_contain_text("the last run failed")


def test_a_new_instance_appears_without_a_reload(page: Page, served: tuple[str, Path]) -> None:
    base, db = served
    page.goto(base + "instances?kind=task")
    expect(page.locator("table.list")).to_be_visible()
    marker = page.evaluate("() => { window.notReloaded = true; return window.notReloaded; }")
    assert marker is True
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_web import Event, jobs_on
        from pathlib import Path
        with jobs_on(Path({str(db)!r})) as jobs:
            jobs.task("orders").send("o-from-elsewhere", Event("placed"))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    expect(page.get_by_role("link", name="task:orders:o-from-elsewhere")).to_be_visible()
    assert page.evaluate("() => window.notReloaded") is True  # swapped in, not reloaded


def test_live_toggle_and_a_phone_sized_screen(browser: Browser, served: tuple[str, Path]) -> None:
    base, _ = served
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    errors: list[Any] = []
    phone.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    phone.goto(base + "instance?id=task:orders:bad-2")
    toggle = phone.locator("#live-toggle")
    expect(toggle).to_have_text("Live: on")
    toggle.click()
    expect(toggle).to_have_text("Live: off")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    phone.reload()
    expect(toggle).to_have_text("Live: off")  # remembered
    toggle.click()
    for path in ("", "instances", "instance?id=task:orders:bad-2", "health"):
        phone.goto(base + path)
        overflow = phone.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
    phone.goto(base + "instance?id=task:orders:bad-2")
    phone.locator("details.confirm > summary").click()  # the terminate form, open
    expect(phone.get_by_label("Reason")).to_be_visible()
    overflow = phone.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, overflow
    context.close()
    assert errors == []


def test_terminate_asks_in_a_panel_then_one_banner(
    page: Page, served: tuple[str, Path], shots: Path
) -> None:
    base, _ = served
    page.goto(base + "instance?id=task:orders:o-idle")
    trigger = page.get_by_role("button", name="Trigger")
    summary = page.locator("details.confirm > summary")
    summary.click()
    form = page.locator("details.confirm form")
    expect(form).to_be_visible()
    page.screenshot(path=str(shots / "terminate-confirm.png"), full_page=True)
    asks, beside, panel = summary.bounding_box(), trigger.bounding_box(), form.bounding_box()
    card = page.locator("section.actions").bounding_box()
    assert asks is not None
    assert beside is not None
    assert panel is not None
    assert card is not None
    assert asks["width"] < 200, asks  # still a button, not a full-width red bar
    assert abs(asks["y"] - beside["y"]) < 2, (asks, beside)  # beside the other actions
    assert panel["width"] < card["width"] * 0.75, (panel, card)
    page.get_by_label("Reason").fill("no longer needed")
    page.get_by_role("button", name="Terminate this instance").click()
    expect(page.locator(".title-row .status")).to_have_text("purged")
    expect(page.locator(".notice")).to_have_count(1)  # one banner says it is gone
    expect(page.locator(".notice")).to_contain_text("gone")


def test_job_filter_is_a_choice_of_known_jobs(page: Page, served: tuple[str, Path]) -> None:
    base, _ = served
    page.goto(base + "instances")
    page.locator("select[name=job]").select_option("hooks")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"[?&]job=hooks(&|$)"))
    expect(page.get_by_role("link", name="debounce:hooks:repo-1")).to_be_visible()
    expect(page.locator("table.list tbody tr")).to_have_count(1)
