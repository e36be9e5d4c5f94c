"""Throwaway databases for tests: a fresh PostgreSQL database per test when one is configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_URL_VARIABLE = "MODELPLANE_TEST_PG_URL"


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the server in MODELPLANE_TEST_PG_URL, dropped afterwards.

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
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
