"""Dependency cycles across servers end (docs/architecture.md, "Liveness"; docs/federation.md,
"Dependency cycles"), with real server processes.

A cycle across servers needs a dependency on a frame that does not exist yet: the first job
submitted names a frame of a job submitted after it. A server that asks about such a frame too
early learns that it does not exist (404) and fails its frame. So the first job's server reaches
the other server through a `Gate`, a TCP port that refuses connections until the test opens it
(it then forwards them): its dependency waits ("unreachable") until every job is submitted.
"""

from __future__ import annotations

import re
import socket
import tarfile
import threading
import time

import httpx
import pytest

from conftest import Farm
from test_federation import pack, signed
from test_liveness import package_with_deps, poll, start, summary, wait_state


def package_with_many_deps(folder, deps: dict[int, list[str]]):
    """package_with_deps, with several dependencies per frame."""
    pkg = package_with_deps(folder, {f: urls[0] for f, urls in deps.items()})
    xml = folder / "distrenjob.xml"
    text = xml.read_text()
    for f, urls in deps.items():
        text = text.replace(f'<frame id="{f}"><depends>{urls[0]}</depends>',
                            f'<frame id="{f}">' + "".join(f"<depends>{u}</depends>" for u in urls))
    xml.write_text(text)
    with tarfile.open(pkg, "w") as t:
        t.add(xml, "distrenjob.xml")
        t.add(folder / "s.pov", "s.pov")
    return pkg


class Gate:
    """127.0.0.1:port, closed (connections refused) until open(); then it forwards every
    connection to `target_port`."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))   # bound, not listening: connections are refused
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.target_port: int | None = None
        self.conns: list[socket.socket] = []

    def open(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            self.conns += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def gate():
    g = Gate()
    yield g
    g.close()


def mesh(farm: Farm, names: list[str], slots: dict[str, int] | None = None) -> None:
    """Every server a peer of every other one."""
    for n in names:
        farm.add(n, (slots or {}).get(n, 0), [p for p in names if p != n])


def gated(farm: Farm, server: str, peer: str, gate: Gate) -> None:
    """`server` reaches `peer` through the gate (before the farm starts)."""
    s = farm.servers[server]
    s.peer_names = [p for p in s.peer_names if p != peer]
    s.extra += ["--peer", f"{peer}={gate.url}"]


def submit(server, pkg, expect_id: int) -> dict:
    job = server.client().submit(pkg)
    assert job["id"] == expect_id, job   # the URLs of the other jobs were written with this id
    return job


def assert_ends_on_the_cycle(server, job: dict, timeout: float = 30) -> str:
    client = server.client()
    info = wait_state(client, job["url"], timeout=timeout)
    assert info["state"] == "failed", summary(client, job["url"])
    error = client.frame(f"{job['url']}/0")["error"]
    assert "dependency cycle: " in error, error
    return error


def test_two_server_cycle_ends(farm, tmp_path, gate):
    """A's frame waits for B's frame, which waits for A's: both jobs fail within seconds, and
    the frames name the cycle."""
    mesh(farm, ["A", "B"])
    gated(farm, "B", "A", gate)
    start(farm)
    a, b = farm.servers["A"], farm.servers["B"]
    t0 = time.monotonic()
    jb = submit(b, package_with_deps(tmp_path / "b", {0: "distren://A/1/0"}), 1)
    ja = submit(a, package_with_deps(tmp_path / "a", {0: "distren://B/1/0"}), 1)
    gate.open(a.port)
    error_a = assert_ends_on_the_cycle(a, ja)
    error_b = assert_ends_on_the_cycle(b, jb)
    took = time.monotonic() - t0
    # whichever server found it first, the path is the cycle, from the dependency back to it
    cycles = re.findall(r"dependency cycle: ([^)]*)", error_a + " " + error_b)
    assert cycles and all(c in ("distren://B/1/0 → distren://A/1/0 → distren://B/1/0",
                                "distren://A/1/0 → distren://B/1/0 → distren://A/1/0") for c in cycles), cycles
    assert took < 20, took


def test_three_server_cycle_ends(farm, tmp_path, gate):
    """A/1/0 -> B/1/0 -> C/1/0 -> A/1/0: the three jobs fail, naming the cycle."""
    mesh(farm, ["A", "B", "C"])
    gated(farm, "C", "A", gate)
    start(farm)
    a, b, c = (farm.servers[n] for n in "ABC")
    jc = submit(c, package_with_deps(tmp_path / "c", {0: "distren://A/1/0"}), 1)
    jb = submit(b, package_with_deps(tmp_path / "b", {0: "distren://C/1/0"}), 1)
    ja = submit(a, package_with_deps(tmp_path / "a", {0: "distren://B/1/0"}), 1)
    gate.open(a.port)
    errors = [assert_ends_on_the_cycle(s, j) for s, j in ((a, ja), (b, jb), (c, jc))]
    cycles = re.findall(r"dependency cycle: ([^)]*)", " ".join(errors))
    assert cycles, errors
    ring = ["distren://A/1/0", "distren://B/1/0", "distren://C/1/0"]
    for cycle in cycles:
        hops = cycle.split(" → ")
        assert len(hops) == 4 and hops[0] == hops[-1], cycle
        i = ring.index(hops[0])
        assert hops[:3] == ring[i:] + ring[:i], cycle


def test_no_cycle_is_not_failed(farm, tmp_path):
    """No false positive: A's frame waits for B's, which waits for two frames of A (a diamond)
    that both wait for a frame of C. The only renderer, D, starts once the chases have run (and
    found no cycle): every job is then done."""
    mesh(farm, ["A", "B", "C", "D"], slots={"D": 1})
    start(farm, "A", "B", "C")
    a, b, c = (farm.servers[n] for n in "ABC")
    jc = submit(c, pack(tmp_path, final=0), 1)
    ja1 = submit(a, package_with_deps(tmp_path / "a1", {1: "distren://C/1/0", 2: "distren://C/1/0"}), 1)
    jb = submit(b, package_with_many_deps(tmp_path / "b", {0: ["distren://A/1/1", "distren://A/1/2"]}), 1)
    ja2 = submit(a, package_with_deps(tmp_path / "a2", {0: "distren://B/1/0"}), 2)
    # A chases B's frame (through the diamond: B/1/0, A/1/1, A/1/2, C/1/0), B chases A's frames
    for server, peer in ((a, "B"), (b, "A")):
        poll(f"{server.name} chased its dependencies on {peer}", server.log.read_text,
             lambda log: re.search(rf"chased \d+ dependencies on {peer}: 0 on a cycle", log), timeout=20)
    assert re.search(r"chased 1 dependencies on B: 0 on a cycle \(4 frontiers asked\)", a.log.read_text())
    start(farm, "D")
    for server, job in ((c, jc), (a, ja1), (b, jb), (a, ja2)):
        client = server.client()
        info = wait_state(client, job["url"], timeout=60)
        assert info["state"] == "done", summary(client, job["url"])
    assert "dependency cycle" not in a.log.read_text() + b.log.read_text() + c.log.read_text()


def test_frontier_route(farm, tmp_path):
    """GET /api/v1/peer/frontier/{job}/{frame}, signed: the frames of other servers that a
    frame waits for through the server's own frames; 404 with the usual body for an unknown
    frame; 401 unsigned."""
    a = farm.add("A", 0, ["B"])   # B: nothing answers there, the dependencies wait
    farm.start()
    job = a.client().submit(package_with_many_deps(
        tmp_path / "a", {0: ["distren://B/5/0", "1"], 1: ["distren://B/5/1", "distren://B/5/0"]}))
    secret = farm.secret.read_bytes().strip()

    def get(path: str) -> httpx.Response:
        return httpx.get(a.url + path, headers=signed(secret, "GET", path))

    r = get(f"/api/v1/peer/frontier/{job['id']}/0")
    assert r.status_code == 200, r.text
    assert r.json() == {"state": "waiting", "waits_on": ["distren://B/5/0", "distren://B/5/1"], "complete": True}
    for path in (f"/api/v1/peer/frontier/{job['id']}/7", f"/api/v1/peer/frontier/{job['id'] + 1}/0"):
        r = get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    assert httpx.get(a.url + f"/api/v1/peer/frontier/{job['id']}/0").status_code == 401
