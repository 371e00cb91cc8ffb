"""Answers on a kept-alive connection come at once: the server turns Nagle's algorithm off on
every connection. With it on, an answer's body (written after its head) waited for the ACK of
the head, which Linux's client delays by 40 ms (at least) on a kept-alive connection: every
peer claim, heartbeat and status poll after a connection's first paid those 40 ms (found when
the listening socket was made without proto IPPROTO_TCP, which asyncio needs to do it itself)."""

from __future__ import annotations

import http.client
import ssl
import time

REQUESTS = 20
# 20 answers with Nagle on take at least 20 x 40 ms; without, a few ms each
LIMIT_S = 0.6


def kept_alive_seconds(conn: http.client.HTTPConnection) -> float:
    conn.request("GET", "/api/v1/server")   # the first answer: the connection is made
    conn.getresponse().read()
    began = time.monotonic()
    for _ in range(REQUESTS):
        conn.request("GET", "/api/v1/server")
        r = conn.getresponse()
        assert r.status == 200 and r.read()
    conn.close()
    return time.monotonic() - began


def test_answers_on_a_kept_alive_connection_do_not_wait_for_delayed_acks(server):
    seconds = kept_alive_seconds(http.client.HTTPConnection("127.0.0.1", server.port, timeout=10))
    assert seconds < LIMIT_S, f"{REQUESTS} kept-alive answers took {seconds:.2f} s (Nagle's algorithm on?)"


def test_the_same_over_tls(server_factory, tls_files):
    s = server_factory(tls=tls_files)
    context = ssl.create_default_context(cafile=str(tls_files.ca))
    seconds = kept_alive_seconds(http.client.HTTPSConnection("127.0.0.1", s.port, timeout=10, context=context))
    assert seconds < LIMIT_S, f"{REQUESTS} kept-alive answers took {seconds:.2f} s over TLS (Nagle's algorithm on?)"
