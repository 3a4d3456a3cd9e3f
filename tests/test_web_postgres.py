"""The dashboard on PostgreSQL: the page and action tests of ``test_web`` run again, with the
database on the session's throwaway cluster instead of a file (one dashboard, two stores)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jinja2")

from test_web import (
    Client,
    populate,
    test_a_nul_character_in_any_field_is_a_bad_request,
    test_a_parked_instance_shows_its_failed_attempts,
    test_a_poll_of_an_unchanged_database_swaps_nothing,
    test_an_ended_threads_connection_closes_with_it,
    test_bulk_confirm_then_act_with_a_cap,
    test_every_page_renders,
    test_filters_live_in_the_url,
    test_finished_instances_and_the_terminate_reason,
    test_hostile_id_and_state_are_escaped,
    test_instance_page_shows_error_traceback_and_timeline,
    test_keyset_pagination_walks_every_instance_once,
    test_retry_from_the_instance_page,
    test_terminate_and_refusals,
    test_unknown_and_malformed_instances,
)

from durajobs.web import make_app

__all__ = [
    "test_a_nul_character_in_any_field_is_a_bad_request",
    "test_a_parked_instance_shows_its_failed_attempts",
    "test_a_poll_of_an_unchanged_database_swaps_nothing",
    "test_an_ended_threads_connection_closes_with_it",
    "test_bulk_confirm_then_act_with_a_cap",
    "test_every_page_renders",
    "test_filters_live_in_the_url",
    "test_finished_instances_and_the_terminate_reason",
    "test_hostile_id_and_state_are_escaped",
    "test_instance_page_shows_error_traceback_and_timeline",
    "test_keyset_pagination_walks_every_instance_once",
    "test_retry_from_the_instance_page",
    "test_terminate_and_refusals",
    "test_unknown_and_malformed_instances",
]


@pytest.fixture
def db(pg_url: str) -> str:
    populate(pg_url)  # type: ignore[arg-type]  # Jobs takes a URL as well as a path
    return pg_url


@pytest.fixture
def client(db: str) -> Iterator[Client]:
    app: Any = make_app(db)
    yield Client(app)
    app.close()


def test_no_password_in_any_page(client: Client, db: str) -> None:
    password = db.split(":")[2].split("@", maxsplit=1)[0]
    for path in ("/", "/instances", "/failed", "/health"):
        answer = client.get(path)
        assert answer.status == 200, path
        assert password not in answer.text
