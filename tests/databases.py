"""Throwaway databases for tests: a fresh PostgreSQL database per test when one is configured,
and the choice of store for the session's whole platform (``MODELPLANE_TEST_PLATFORM_STORE``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_URL_VARIABLE = "MODELPLANE_TEST_PG_URL"
PLATFORM_STORE_VARIABLE = "MODELPLANE_TEST_PLATFORM_STORE"
PLATFORM_STORES = ("sqlite", "postgres")


def platform_store() -> str:
    """Which store the session's ``platform`` runs on: ``sqlite`` (default) or ``postgres``.

    Raises :class:`pytest.UsageError` for an unknown value, or for ``postgres`` without a
    server: a PostgreSQL run that quietly skipped, or fell back to SQLite, would pass CI
    while proving nothing about PostgreSQL.
    """
    chosen = (os.environ.get(PLATFORM_STORE_VARIABLE) or "sqlite").strip().lower()
    if chosen not in PLATFORM_STORES:
        raise pytest.UsageError(
            f"{PLATFORM_STORE_VARIABLE}={os.environ[PLATFORM_STORE_VARIABLE]!r} is invalid: "
            f"expected one of {', '.join(PLATFORM_STORES)} (or unset for sqlite)")
    if chosen == "postgres" and not os.environ.get(PG_URL_VARIABLE):
        raise pytest.UsageError(
            f"{PLATFORM_STORE_VARIABLE}=postgres needs a PostgreSQL server, but {PG_URL_VARIABLE} "
            f"is unset; start one with: export {PG_URL_VARIABLE}=\"$(scripts/test-postgres.sh)\"")
    return chosen


def platform_store_description() -> str:
    """One line for pytest's header saying where the platform's store lives."""
    if platform_store() == "sqlite":
        return "modelplane platform store: sqlite (a file in the session's platform home)"
    from sqlalchemy.engine import make_url

    server = make_url(os.environ[PG_URL_VARIABLE]).render_as_string(hide_password=True)
    return f"modelplane platform store: postgres (a fresh database on {server}, dropped afterwards)"


@contextmanager
def fresh_postgres_database(template: str | None = None) -> Iterator[str]:
    """A new database on the server in MODELPLANE_TEST_PG_URL, dropped afterwards: empty, or
    a copy of the database named ``template`` (which no session may be connected to).

    Skips the test when the variable is unset (``.ci/run`` starts PostgreSQL and sets it).
    """
    admin_url = os.environ.get(PG_URL_VARIABLE)
    if not admin_url:
        pytest.skip(f"{PG_URL_VARIABLE} is unset; .ci/run starts PostgreSQL and sets it "
                    "(locally: export MODELPLANE_TEST_PG_URL=\"$(scripts/test-postgres.sh)\")")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'
                                + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
