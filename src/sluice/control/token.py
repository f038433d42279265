"""The admin API's bearer token file: one validating reader for the server and the CLI client."""

from __future__ import annotations

from pathlib import Path
from typing import Final

MIN_TOKEN_LENGTH: Final = 16
"""Characters a token needs at least."""


class TokenError(OSError):
    """The token file cannot be used (unreadable, or no token of `MIN_TOKEN_LENGTH` characters on its
    first line). An OSError, so a caller that handles an unreadable file handles this too."""


def read_token(path: str | Path) -> str:
    """The bearer token: the file's first line without surrounding blanks, at least 16 characters."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the token file: {exc.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{path}: the token must be at least {MIN_TOKEN_LENGTH} characters")
    return token
