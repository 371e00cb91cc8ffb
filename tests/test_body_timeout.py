"""Request bodies that stop arriving: a package upload, a peer's frame output and a peer's JSON
body are cut off with 408 `request_timeout` after `--body-timeout` seconds without data, so a
client or a peer that stalls holds no connection, file or slot for ever."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time

import httpx

from test_federation import pack, signed


def stalled_request(url: str, method: str, path: str, headers: dict[str, str], length: int,
                    sent: bytes) -> tuple[int, dict, float]:
    """Send a request head announcing `length` body bytes, then only `sent`, then nothing.
    Returns the status, the JSON body of the answer and the seconds it took."""
    host, port = url.removeprefix("http://").split(":")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        start = time.monotonic()
        sock.sendall(head.encode() + sent)
        answer = b""
        while True:
            end = answer.find(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: (\d+)", answer[:end]) if end >= 0 else None
            if length and len(answer) - end - 4 >= int(length.group(1)):
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        took = time.monotonic() - start
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.split(b"\r\n\r\n", 1)[1]), took


def test_a_stalled_package_upload_is_cut_off(server_factory, tmp_path):
    s = server_factory("alpha", slots=0, extra=["--body-timeout", "1"])
    status, body, took = stalled_request(s.url, "POST", "/api/v1/jobs", {}, 100_000, b"\x1f\x8b" + bytes(998))
    assert status == 408 and body["error"]["code"] == "request_timeout", body
    assert "no body data for 1 s" in body["error"]["message"]
    assert 0.9 < took < 5


def test_a_stalled_peer_upload_is_cut_off(farm, tmp_path):
    a = farm.add("A", 0, ["B"], extra=["--body-timeout", "1"])
    farm.start()
    secret = farm.secret.read_bytes().strip()
    job = a.client().submit(pack(tmp_path, final=0))
    jid = int(job["url"].rsplit("/", 1)[1])
    claim = json.dumps({"backends": ["povray"]}).encode()
    r = httpx.post(a.url + "/api/v1/peer/claim", content=claim, headers=signed(secret, "POST", "/api/v1/peer/claim", claim))
    assert r.status_code == 200
    output = f"/api/v1/peer/leases/{jid}/0/{r.json()['attempt']}/output"
    data = bytes(range(256)) * 400
    status, body, took = stalled_request(a.url, "PUT", output, signed(secret, "PUT", output, data), len(data), data[:1000])
    assert status == 408 and body["error"]["code"] == "request_timeout", body
    assert 0.9 < took < 5
    # a JSON body of the peer API too
    heartbeat = f"/api/v1/peer/leases/{jid}/0/{r.json()['attempt']}/heartbeat"
    status, body, took = stalled_request(a.url, "POST", heartbeat, signed(secret, "POST", heartbeat, b"{}"), 2, b"{")
    assert status == 408 and body["error"]["code"] == "request_timeout", body
    # the lease is still the peer's: the whole output, sent at once, is taken
    r = httpx.put(a.url + output, content=data, headers=signed(secret, "PUT", output, data))
    assert r.status_code == 200 and r.json()["sha256"] == hashlib.sha256(data).hexdigest()
