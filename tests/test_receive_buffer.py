"""The server's h11 receive buffer (server/main.py, BodyReceiveBuffer) answers exactly as h11's
own, whatever arrives in whatever pieces; and the server's connections use it."""

from __future__ import annotations

import asyncio
import random

import h11
import pytest
from h11._receivebuffer import ReceiveBuffer

from distren.server.main import BodyReceiveBuffer, GuardedH11Protocol

pytestmark = pytest.mark.skipif(BodyReceiveBuffer is None, reason="another h11: its own buffer is used")


def _same(ours, theirs):
    assert type(ours) is type(theirs)
    if isinstance(theirs, list):
        assert [bytes(x) for x in ours] == [bytes(x) for x in theirs]
    elif theirs is not None:
        assert bytes(ours) == bytes(theirs)


@pytest.mark.parametrize("seed", range(200))
def test_body_receive_buffer_answers_as_h11s_own(seed):
    rng = random.Random(seed)
    pieces = [b"GET / HTTP/1.1\r\n", b"Host: x\r\n\r\n", b"\r\n", b"\n", b"abc", b"\r", b"\n\r\n"]
    ours, theirs = BodyReceiveBuffer(), ReceiveBuffer()
    for _ in range(60):
        op = rng.randrange(6)
        if op <= 1:
            data = rng.choice(pieces) if op == 0 else rng.randbytes(rng.randrange(0, 3000))
            ours += data
            theirs += bytearray(data) if rng.random() < 0.5 else data
        elif op == 2:
            n = rng.choice([-3, 0, 1, 5, 100, 10_000])
            _same(ours.maybe_extract_at_most(n), theirs.maybe_extract_at_most(n))
        elif op == 3:
            _same(ours.maybe_extract_next_line(), theirs.maybe_extract_next_line())
        elif op == 4:
            _same(ours.maybe_extract_lines(), theirs.maybe_extract_lines())
        else:
            assert ours.is_next_line_obviously_invalid_request_line() == theirs.is_next_line_obviously_invalid_request_line()
        assert len(ours) == len(theirs) and bytes(ours) == bytes(theirs) and bool(ours) == bool(theirs)


def test_a_taken_body_piece_is_not_changed_by_what_arrives_next():
    buf = BodyReceiveBuffer()
    buf += b"first"
    piece = buf.maybe_extract_at_most(100)
    buf += b"second"
    assert bytes(piece) == b"first" and bytes(buf) == b"second"


def test_the_servers_connections_use_it():
    from distren.server.main import uvicorn_config

    async def app(scope, receive, send):
        pass

    config = uvicorn_config(app)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        proto = GuardedH11Protocol(config, server_state=type("S", (), {"connections": set(), "tasks": set(),
                                                                          "total_requests": 0, "default_headers": []})(),
                                   app_state={}, _loop=loop)
    finally:
        loop.close()
    assert type(proto.conn._receive_buffer) is BodyReceiveBuffer
    proto.conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert isinstance(proto.conn.next_event(), h11.Request)
    assert bytes(proto.conn.next_event().data) == b"hello"
