"""Fuzzing the admin API against its own OpenAPI document, with and without the token.

A hypothesis-driven walker (schemathesis's idea, without its dependencies): every request is one of
the document's operations with drawn path parameters, Authorization header and body. Whatever is
sent: the status is one the document lists for that operation, never 500, nothing is logged with a
traceback, and no change happens without the valid token. Small in the test command; ``make fuzz``
(SLUICE_FUZZ_FULL=1) runs 100,000 requests in all; SLUICE_API_FUZZ_EXAMPLES sets the count per kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.config import AdminOptions
from sluice.control.api import AdminServer, build_app, openapi_document
from sluice.control.metrics import Sources, build_registry
from tests.support.admin import TOKEN, FakeController, Reloader
from tests.support.loopback import free_port

FULL = os.environ.get("SLUICE_FUZZ_FULL") == "1"
EXAMPLES = int(os.environ.get("SLUICE_API_FUZZ_EXAMPLES", 50_000 if FULL else 400))
"""Requests per server kind (two kinds: 800 in the test command, 100,000 with SLUICE_FUZZ_FULL=1)."""
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DOC = openapi_document()
OPERATIONS = sorted((path, method) for path, ops in DOC["paths"].items() for method in ops)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Served:
    """An admin server run by `AdminServer` on its own loop in a thread (the fuzzer is synchronous)."""

    port: int
    fake: FakeController
    reloader: Reloader
    token: bool
    records: Records = field(default_factory=Records)

    def changes(self) -> tuple[int, int]:
        return len(self.fake.calls), self.reloader.count


@contextlib.contextmanager
def serve(*, token: bool) -> Iterator[Served]:
    fake, reloader = FakeController(), Reloader()
    served = Served(free_port(), fake, reloader, token)
    registry = build_registry(Sources(stats=dict))
    admin = AdminServer(
        AdminOptions(listen=f"127.0.0.1:{served.port}"),
        lambda unix: build_app(
            fake, token=TOKEN if token else None, over_unix=unix, reload=reloader, registry=registry
        ),
    )
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(admin.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(admin.close())
        loop.close()

    thread = threading.Thread(target=run, name="admin-fuzz", daemon=True)
    root = logging.getLogger()
    root.addHandler(served.records)
    thread.start()
    try:
        assert ready.wait(10)
        yield served
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        root.removeHandler(served.records)


@pytest.fixture(scope="module")
def with_token() -> Iterator[Served]:
    with serve(token=True) as served:
        yield served


@pytest.fixture(scope="module")
def without_token() -> Iterator[Served]:
    with serve(token=False) as served:
        yield served


def send(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


PATH_VALUES = st.one_of(
    st.sampled_from(
        ["web", "nope", "127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9001", "127.0.0.1:1", "%", ".."]
    ),
    st.text(max_size=30),
)
AUTH = st.one_of(
    st.none(),
    st.just(f"Bearer {TOKEN}".encode()),
    st.sampled_from([b"Bearer", b"Bearer ", b"bearer " + TOKEN.encode() + b"x", b"Basic " + TOKEN.encode()]),
    st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b).map(lambda b: b"Bearer " + b),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
BODIES = st.one_of(
    st.just(b""),
    st.integers().map(lambda w: json.dumps({"weight": w}).encode()),
    st.integers(0, 65535).map(lambda w: json.dumps({"weight": w}).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(4000, 6000).map(lambda n: b"{" + b" " * n + b"}"),
)


def walk(served: Served, data: st.DataObject) -> None:
    template, method = data.draw(st.sampled_from(OPERATIONS))
    path = template
    for name in ("{name}", "{addr}"):
        if name in path:
            path = path.replace(name, quote(data.draw(PATH_VALUES), safe=""))
    auth = data.draw(AUTH) if method == "post" else None
    body = data.draw(BODIES) if method == "post" else b""
    request = (
        method.upper().encode()
        + b" "
        + path.encode()
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + (b"Authorization: " + auth + b"\r\n" if auth is not None else b"")
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    before = served.changes()
    served.records.records.clear()
    status, answer = send(served.port, request)
    listed = DOC["paths"][template][method]["responses"]
    assert status != 500, answer
    assert str(status) in listed, (status, method, template, answer)
    valid = auth is not None and auth.strip() == f"Bearer {TOKEN}".encode()
    if not (served.token and valid):
        assert served.changes() == before, "a change without the valid token"
    tracebacks = [r for r in served.records.records if r.exc_info is not None or r.levelno >= logging.ERROR]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


@FUZZ
@given(data=st.data())
def test_the_api_with_the_token(with_token: Served, data: st.DataObject) -> None:
    walk(with_token, data)


@FUZZ
@given(data=st.data())
def test_the_api_without_the_token(without_token: Served, data: st.DataObject) -> None:
    walk(without_token, data)


def test_findings_of_the_review_stay_fixed(with_token: Served) -> None:
    """Issue 12.4 as fixed cases: a non-ASCII Authorization header is a 400, not a 500."""
    for auth in (b"Bearer \xff\xfe", "Bearer t\u00f6ken".encode(), b"\xe2\x82\xac"):
        request = (
            b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
            + auth
            + b"\r\nContent-Length: 0\r\n\r\n"
        )
        assert send(with_token.port, request)[0] == 400
