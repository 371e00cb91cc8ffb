"""A corpus of hostile and broken inputs (tests/corpus/cases.json, packages built by
tests/corpus/make_corpus.py), replayed against one real server.

Every case must get its documented refusal: the expected status and a JSON error whose message
names the problem (for `distren status URL`: the exit code and one readable line on stderr).
After every case the server still answers, the good job submitted first is unchanged and its
bundle downloads, nothing is left in data/tmp or blobs/tmp, no scene or blob was added, and
nothing changed outside the data folder (the server's working folder, /tmp/distren-corpus-*).
"""

from __future__ import annotations

import glob
import io
import json
import os
import socket
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess, run_cli

CORPUS = Path(__file__).resolve().parent / "corpus"
sys.path.insert(0, str(CORPUS))
_dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # tests/corpus/ holds data only
import make_corpus  # noqa: E402

sys.dont_write_bytecode = _dont_write

CASES = make_corpus.load_cases()
LIMITS = ["--max-frames", "50", "--max-members", "20", "--max-unpacked-bytes", "2000000", "--max-job-bytes", "200000"]
ESCAPE_GLOB = "/tmp/distren-corpus-*"


class CwdServer(ServerProcess):
    """A ServerProcess whose working folder is `cwd` (watched for stray files)."""

    def __init__(self, *args, cwd: Path, **kw):
        super().__init__(*args, **kw)
        self.cwd = cwd

    def start(self) -> "CwdServer":
        old = os.getcwd()
        os.chdir(self.cwd)  # Popen inherits it; ServerProcess.start takes no cwd
        try:
            return super().start()
        finally:
            os.chdir(old)


def tree(folder: Path) -> list[tuple[str, int]]:
    """Every path under folder with its size (directories: -1), links not followed."""
    out = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            out.append((str(p.relative_to(folder)), -1 if p.is_dir() and not p.is_symlink() else st.st_size))
    return sorted(out)


class Env:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.cwd = tmp / "cwd"
        self.cwd.mkdir()
        (self.cwd / "marker.txt").write_text("the server's working folder\n")
        self.data = tmp / "data"
        self.packages = make_corpus.build(tmp / "packages")
        self.srv = CwdServer(self.data, "alpha", slots=0, extra=LIMITS, cwd=self.cwd).start()
        self.url = self.srv.url
        self.escapes_before = sorted(glob.glob(ESCAPE_GLOB))
        assert self.escapes_before == [], f"leftover escape targets from an earlier run: {self.escapes_before}"
        resp = httpx.post(self.url + "/api/v1/jobs", content=make_corpus.good(), timeout=60)
        assert resp.status_code == 201, resp.text
        self.good = resp.json()["id"]
        self.good_job = self.job_state()
        self.good_frames = httpx.get(f"{self.url}/api/v1/jobs/{self.good}/frames").json()
        self.outside = self.outside_snapshot()
        self.stored = self.stored_snapshot()

    def job_state(self) -> dict:
        resp = httpx.get(f"{self.url}/api/v1/jobs/{self.good}", timeout=10)
        assert resp.status_code == 200, resp.text
        job = resp.json()
        return {k: job[k] for k in ("id", "state", "total_frames") if k in job}

    def outside_snapshot(self) -> dict:
        """What must never change: the server's cwd, the tmp folder beside data, escape targets."""
        return {
            "cwd": tree(self.cwd),
            "beside_data": sorted(p.name for p in self.tmp.iterdir() if p.name != "data" and not p.name.endswith(".log")),
            "data_top": sorted(p.name for p in self.data.iterdir()),
            "escapes": sorted(glob.glob(ESCAPE_GLOB)),
        }

    def stored_snapshot(self) -> dict:
        return {
            "scenes": sorted(p.name for p in (self.data / "scenes").iterdir()),
            "blobs": sorted(str(p.relative_to(self.data)) for p in (self.data / "blobs").rglob("*") if p.is_file()),
            "jobs": [j["id"] for j in httpx.get(self.url + "/api/v1/jobs", timeout=10).json()],
        }


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("corpus"))
    yield e
    e.srv.stop()


def raw_request(url: str, method: str, path: str, headers: dict, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request over a plain socket, sent exactly as given (no path
    normalisation, any Content-Length); returns (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    if body and "Content-Length" not in headers:
        headers = {**headers, "Content-Length": str(len(body))}
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head.encode())
        try:
            s.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before taking all of an oversized body
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    raw = b"".join(chunks)
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in header.lower():
        out, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        payload = out
    return status, payload


def http_body(spec: str) -> bytes:
    if spec.startswith("zeros:"):
        return bytes(int(spec.split(":", 1)[1]))
    return spec.encode()


def check_error(status: int, payload: bytes, case: dict) -> None:
    assert status == case["status"], (case["id"], status, payload[:500])
    try:
        err = json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
        pytest.fail(f"{case['id']}: not a JSON error: {payload[:300]!r}")
    if "code" in case:
        assert err["code"] == case["code"], (case["id"], err)
    assert case["word"].lower() in err["message"].lower(), (case["id"], err)
    assert "root:x:0:0" not in err["message"]  # no host file leaks into a message


def test_manifest_is_complete():
    assert len(CASES) >= 40
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))
    kinds = {c["kind"] for c in CASES}
    assert kinds == {"package", "xml", "http", "url"}
    for c in CASES:
        if c["kind"] == "package":
            assert c["input"] in make_corpus.PACKAGES, c["id"]


def test_corpus_is_small_on_disk():
    assert sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()) < 200_000


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(env: Env, case: dict):
    stored = env.stored_snapshot()
    kind = case["kind"]
    if kind in ("package", "xml"):
        body = env.packages[case["id"]].read_bytes()
        resp = httpx.post(env.url + "/api/v1/jobs", content=body, timeout=60)
        check_error(resp.status_code, resp.content, case)
    elif kind == "http":
        spec = case["input"]
        path = spec["path"].replace("{good}", str(env.good))
        status, payload = raw_request(env.url, spec["method"], path, dict(spec["headers"]), http_body(spec["body"]))
        check_error(status, payload, case)
    else:
        res = run_cli("status", case["input"], "--server", env.url, cwd=env.cwd, timeout=60)
        assert res.returncode == case["status"], (case["id"], res.returncode, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1, (case["id"], res.stderr)
        assert "Traceback" not in res.stderr
        assert lines[0].startswith("distren: ") and case["word"].lower() in lines[0].lower(), (case["id"], lines)
        assert res.stdout == ""

    # the aftermath: the server is fine and nothing was left behind
    assert httpx.get(env.url + "/api/v1/server", timeout=10).status_code == 200
    assert env.job_state() == env.good_job
    assert list((env.data / "tmp").iterdir()) == []
    assert list((env.data / "blobs" / "tmp").iterdir()) == [] if (env.data / "blobs" / "tmp").exists() else True
    assert env.stored_snapshot() == stored, "a refused input left a job, scene or blob behind"
    assert env.outside_snapshot() == env.outside
    assert env.srv.proc.poll() is None


def test_good_job_survived(env: Env):
    """Runs after the corpus: the good job is as it was and its bundle downloads."""
    assert env.job_state() == env.good_job
    frames = httpx.get(f"{env.url}/api/v1/jobs/{env.good}/frames", timeout=10).json()
    assert frames == env.good_frames
    resp = httpx.get(f"{env.url}/api/v1/jobs/{env.good}/bundle", timeout=60)
    assert resp.status_code == 200, resp.text
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as t:
        t.getmembers()  # a readable tarball (no frame is done with 0 slots: may be empty)
    assert sorted(glob.glob(ESCAPE_GLOB)) == []
