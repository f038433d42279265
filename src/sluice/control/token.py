"""The admin API's bearer token file: one validating reader for the server and the CLI client, the
writer of ``sluice token``, and the constant-time comparison the API uses.

The file must be private to its owner (as ssh requires of a private key): one readable or writable by
group or others is refused, by the server and by the CLI client alike, with the command that fixes it.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Final

MIN_TOKEN_LENGTH: Final = 16
"""Characters a token needs at least."""
MAX_TOKEN_FILE_BYTES: Final = 4096
"""Largest token file read (a token is one short line)."""
SHARED_BITS: Final = stat.S_IRWXG | stat.S_IRWXO
"""Mode bits that give group or others access (0o077): refused."""
NEW_TOKEN_BYTES: Final = 32
"""Random bytes in a token `new_token` makes (256 bits; 43 URL-safe base64 characters)."""


class TokenError(OSError):
    """The token file cannot be used (unreadable, shared with group or others, or no token of
    `MIN_TOKEN_LENGTH` visible ASCII characters on its first line). An OSError, so a caller that
    handles an unreadable file handles this too."""


class TokenExists(TokenError):
    """`write_token` without ``force`` found the file already there."""


def read_token(path: str | Path) -> str:
    """The bearer token: the file's first line without surrounding blanks, at least 16 visible ASCII
    characters. A file with any group/other permission bit raises TokenError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the token file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file opened, not whatever the path names a moment later
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"{path}: the token file is not a regular file")
        if st.st_mode & SHARED_BITS:
            raise TokenError(
                f"{path}: the token file is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); make it private to its owner: chmod 600 {path}"
            )
        data = os.read(fd, MAX_TOKEN_FILE_BYTES)
    except TokenError:
        raise
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the token file: {exc.strerror}") from None
    finally:
        os.close(fd)
    text = data.decode("ascii", errors="replace")
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{path}: the token must be at least {MIN_TOKEN_LENGTH} characters")
    if not all("!" <= c <= "~" for c in token):
        raise TokenError(f"{path}: the token must be visible ASCII characters (no blanks, no UTF-8)")
    return token


def new_token() -> str:
    """A fresh random token (`NEW_TOKEN_BYTES` from the OS's CSPRNG, URL-safe base64)."""
    return secrets.token_urlsafe(NEW_TOKEN_BYTES)


def write_token(path: str | Path, *, force: bool = False) -> str:
    """Write a fresh token to `path`, mode 0600 from its first instant, and return it.

    An existing file raises TokenError unless `force`; with `force` the new file is written beside it
    and renamed over it, so the path never names a half-written or shared file."""
    path = Path(path)
    token = new_token()
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if force else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise TokenExists(f"{path}: exists; give --force to replace it with a new token") from None
    except OSError as exc:
        raise TokenError(f"{path}: cannot write the token file: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
            os.write(fd, (token + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(target, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise TokenError(f"{path}: cannot write the token file: {exc.strerror}") from None
    return token


def token_matches(given: str, token: str) -> bool:
    """Whether `given` (from a request) is `token`, in time that does not depend on where they differ.

    `given` may hold anything a client sent (undecodable bytes arrive as surrogates)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))
