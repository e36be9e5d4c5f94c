"""A store that is away, or a URL naming none, ends a command in one line that says what
to check, without the URL's password; and no command prints that password."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane.cli import main
from modelplane.settings import reset_settings_cache

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize("url, cause", [
    (f"postgresql+psycopg://modelplane:{SECRET}@127.0.0.1:1/modelplane", "Connection refused"),
    ("foo://somewhere/db", "Can't load plugin"),
])
@pytest.mark.parametrize("command", [["db", "current"], ["db", "check"]])
def test_a_store_that_cannot_be_used_is_one_clear_line(
        modelplane_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        url: str, cause: str, command: list[str]) -> None:
    monkeypatch.setenv("MODELPLANE_DB_URL", url)
    reset_settings_cache()
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the store at ") and cause in err, err
    assert "check MODELPLANE_DB_URL" in err and "Traceback" not in err
    assert SECRET not in err


def test_db_upgrade_names_the_store_without_its_password(
        modelplane_home: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from modelplane.settings import url_without_password

    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MODELPLANE_DB_URL", url)
    reset_settings_cache()
    main(["db", "upgrade"])
    assert f"schema up to date: {url_without_password(url)}" in capsys.readouterr().out
    assert url_without_password(f"postgresql+psycopg://u:{SECRET}@db/x") == \
        "postgresql+psycopg://u:***@db/x"
