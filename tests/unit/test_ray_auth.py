"""Ray token authentication is detected from the places Ray looks for a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.ray_auth import ray_auth_env, token_available


def test_token_file_turns_token_mode_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_auth_env({}) == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret")
    assert token_available({})
    assert ray_auth_env({}) == {"RAY_AUTH_MODE": "token"}


def test_explicit_mode_and_other_token_sources(tmp_path: Path) -> None:
    assert ray_auth_env({"RAY_AUTH_TOKEN": "x"}) == {"RAY_AUTH_MODE": "token"}
    token_file = tmp_path / "tok"
    token_file.write_text("x")
    assert ray_auth_env({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == {"RAY_AUTH_MODE": "token"}
    assert ray_auth_env({"RAY_AUTH_TOKEN": "x", "RAY_AUTH_MODE": "disabled"}) == {}
