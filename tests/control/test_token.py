"""The admin token file: private to its owner or refused (by the server and the CLI alike), written
fresh by `sluice token`, and compared in constant time (issue 12.7)."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

import pytest

from sluice.control import token as token_module
from sluice.control.client import read_token_file
from sluice.control.token import TokenError, TokenExists, read_token, token_matches, write_token
from tests.support.admin import TOKEN


def token_file(tmp_path: Path, mode: int, text: str = TOKEN + "\n") -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o666, 0o604, 0o620, 0o602, 0o610], ids=oct)
def test_a_token_file_shared_with_group_or_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = token_file(tmp_path, mode)
    with pytest.raises(TokenError) as info:
        read_token(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=oct)
def test_a_private_token_file_is_read(tmp_path: Path, mode: int) -> None:
    assert read_token(token_file(tmp_path, mode)) == TOKEN


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
def test_the_cli_client_refuses_a_shared_token_file_too(tmp_path: Path, mode: int) -> None:
    path = token_file(tmp_path, mode)
    with pytest.raises(TokenError) as info:
        read_token_file(path)
    assert f"chmod 600 {path}" in str(info.value)


def test_write_token_makes_a_private_file_with_a_fresh_readable_token(tmp_path: Path) -> None:
    old = os.umask(0)  # the widest umask: the file must still be 0600
    try:
        path = tmp_path / "token"
        token = write_token(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_token(path) == token and len(token) >= 40
    assert write_token(tmp_path / "other") != token


def test_write_token_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = token_file(tmp_path, 0o600)
    with pytest.raises(TokenExists, match="--force"):
        write_token(path)
    assert read_token(path) == TOKEN
    path.chmod(0o644)  # replaced by a new private file, not re-used
    token = write_token(path, force=True)
    assert read_token(path) == token != TOKEN
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token"]  # no temporary file left
    with pytest.raises(TokenError, match="cannot write"):
        write_token(tmp_path / "missing-dir" / "token")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short\n", "at least 16"),
        ("", "at least 16"),
        ("tökén-with-ütf8-0123456789\n", "visible ASCII"),
        ("\xff" * 40, "visible ASCII"),
    ],
)
def test_tokens_that_cannot_be_sent_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(TokenError, match=expected):
        read_token(token_file(tmp_path, 0o600, text))


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="not a regular file"):
        read_token(tmp_path)
    with pytest.raises(TokenError, match="cannot read"):
        read_token(tmp_path / "missing")


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(token_module.hmac, "compare_digest", recording)
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN[:-1] + "x", TOKEN)
    assert not token_matches("\udcff\udcfe", TOKEN)  # undecodable request bytes: no exception
    assert not token_matches("", TOKEN)
    assert len(calls) == 4
