"""The admin token file: private to its owner or refused (the server) / loudly warned about (the CLI),
and compared in constant time (issue 12.7)."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

import pytest

from sluice.control import token as token_module
from sluice.control.client import read_token_file
from sluice.control.token import TokenError, read_token, token_matches
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


def test_the_cli_client_warns_loudly_and_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = token_file(tmp_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="sluice.control.token"):
        assert read_token_file(path) == TOKEN
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert f"chmod 600 {path}" in caplog.records[0].getMessage()


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
