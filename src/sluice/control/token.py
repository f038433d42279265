"""The admin API's bearer token file: one validating reader for the server and the CLI client, and the
constant-time comparison the API uses.

The file must be private to its owner (as ssh requires of a private key): one readable or writable by
group or others is refused with the command that fixes it. The server refuses such a file; the CLI
client, whose file is the operator's own, says so loudly and goes on (``shared_ok=True``).
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH: Final = 16
"""Characters a token needs at least."""
MAX_TOKEN_FILE_BYTES: Final = 4096
"""Largest token file read (a token is one short line)."""
SHARED_BITS: Final = stat.S_IRWXG | stat.S_IRWXO
"""Mode bits that give group or others access (0o077): refused."""


class TokenError(OSError):
    """The token file cannot be used (unreadable, shared with group or others, or no token of
    `MIN_TOKEN_LENGTH` visible ASCII characters on its first line). An OSError, so a caller that
    handles an unreadable file handles this too."""


def read_token(path: str | Path, *, shared_ok: bool = False) -> str:
    """The bearer token: the file's first line without surrounding blanks, at least 16 visible ASCII
    characters. A file with any group/other permission bit raises TokenError (``shared_ok``: a
    warning is logged instead)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the token file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the file opened, not whatever the path names a moment later
        if not stat.S_ISREG(st.st_mode):
            raise TokenError(f"{path}: the token file is not a regular file")
        if st.st_mode & SHARED_BITS:
            message = (
                f"{path}: the token file is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); make it private to its owner: chmod 600 {path}"
            )
            if not shared_ok:
                raise TokenError(message)
            log.warning("%s", message)
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


def token_matches(given: str, token: str) -> bool:
    """Whether `given` (from a request) is `token`, in time that does not depend on where they differ.

    `given` may hold anything a client sent (undecodable bytes arrive as surrogates)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))
