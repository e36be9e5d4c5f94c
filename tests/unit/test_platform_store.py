"""The choice of store for the test session's platform (MODELPLANE_TEST_PLATFORM_STORE)."""

from __future__ import annotations

import pytest

from tests.databases import (
    PG_URL_VARIABLE,
    PLATFORM_STORE_VARIABLE,
    platform_store,
    platform_store_description,
)


def test_unset_means_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PLATFORM_STORE_VARIABLE, raising=False)
    assert platform_store() == "sqlite"
    assert "sqlite" in platform_store_description()


def test_postgres_names_the_server_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLATFORM_STORE_VARIABLE, " Postgres ")
    monkeypatch.setenv(PG_URL_VARIABLE, "postgresql+psycopg://ci:s3cret@127.0.0.1:55432/postgres")
    assert platform_store() == "postgres"
    description = platform_store_description()
    assert "postgres" in description and "127.0.0.1:55432" in description
    assert "s3cret" not in description


def test_an_unknown_store_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLATFORM_STORE_VARIABLE, "pg")
    with pytest.raises(pytest.UsageError) as error:
        platform_store()
    assert PLATFORM_STORE_VARIABLE in str(error.value) and "'pg'" in str(error.value)
    assert "sqlite, postgres" in str(error.value)


def test_postgres_without_a_server_is_refused_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # A PostgreSQL pass that skipped every platform test would pass CI proving nothing.
    monkeypatch.setenv(PLATFORM_STORE_VARIABLE, "postgres")
    monkeypatch.delenv(PG_URL_VARIABLE, raising=False)
    with pytest.raises(pytest.UsageError) as error:
        platform_store()
    assert PG_URL_VARIABLE in str(error.value) and "scripts/test-postgres.sh" in str(error.value)
