"""The unit tier's shared set-up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelplane.settings import reset_settings_cache


@pytest.fixture(autouse=True)
def local_data_roots(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pipelines read local data files only within MODELPLANE_DATA_ROOTS: the tests' files
    are under pytest's temporary folder (a test of the rule sets its own)."""
    monkeypatch.setenv("MODELPLANE_DATA_ROOTS", str(tmp_path_factory.getbasetemp()))
    reset_settings_cache()
    yield
    reset_settings_cache()
