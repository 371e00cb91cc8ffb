"""Blob transfers between servers (Federation.fetch_blob) against a scripted peer: hashed as the
bytes arrive and verified before anything is published, resumed with HTTP Range (the bytes kept
from before verified too), refused when corrupted or larger than announced; and the streamed
writer (StreamWriter) and resumable writer (BlobStore.resume) of the blob store."""

from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest

from distren.errors import TooLarge
from distren.federation.peers import PeerError
from distren.federation.service import Federation, FederationSettings
from distren.store.blobs import BlobStore, StreamWriter

BLOB = bytes(range(256)) * 40_000    # 10 MB, several batches
SHA = hashlib.sha256(BLOB).hexdigest()


class Response:
    def __init__(self, status: int, body: bytes, fail_after: int | None = None):
        self.status_code = status
        self.body = body
        self.fail_after = fail_after

    async def aiter_bytes(self):
        import httpx

        for i in range(0, len(self.body), 65536):
            if self.fail_after is not None and i >= self.fail_after:
                raise httpx.ReadError("connection reset")
            yield self.body[i:i + 65536]

    async def aread(self):
        return self.body

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False


class Peer:
    """Serves one blob as the peer route does (Range: a 206 of the rest), or as scripted:
    `answers` is a list of (status, body, fail_after) used one per request, then the real one."""

    def __init__(self, blob: bytes, answers=()):
        self.blob = blob
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.peers = {"home": None}

    async def stream(self, server, path, headers=None):
        self.requests.append(dict(headers or {}))
        if self.answers:
            return Response(*self.answers.pop(0))
        start = int(headers["Range"][6:-1]) if headers and "Range" in headers else 0
        if start >= len(self.blob):
            return Response(416, b"")
        return Response(206 if start else 200, self.blob[start:])

    async def close(self):
        pass


class Core:
    """What Federation needs of a server's core for transfers: its blob store and metrics."""

    def __init__(self, root):
        from distren.metrics import Metrics

        self.blobs = BlobStore(root / "blobs")
        self.metrics = Metrics()


def fetch(tmp_path, peer, size=len(BLOB), sha=SHA, part: bytes | None = None, retries: int = 5):
    core = Core(tmp_path)
    if part is not None:
        (core.blobs.tmp_dir / f"download-{sha}.part").write_bytes(part)
    fed = Federation(core, peer, FederationSettings(transfer_retries=retries), verifier=None)

    async def run():
        return await fed.fetch_blob("home", sha, size)

    return core, asyncio.run(run())


def test_a_blob_arrives_verified_and_published_once(tmp_path):
    peer = Peer(BLOB)
    core, blob = fetch(tmp_path, peer)
    assert (blob.sha256, blob.size) == (SHA, len(BLOB))
    assert core.blobs.path(SHA).read_bytes() == BLOB
    assert list(core.blobs.tmp_dir.iterdir()) == [] and peer.requests == [{}]


def test_an_interrupted_download_resumes_where_it_stopped_and_is_verified_whole(tmp_path):
    peer = Peer(BLOB, answers=[(200, BLOB, 3 * 65536)])   # cut off after 3 pieces
    core, blob = fetch(tmp_path, peer)
    assert core.blobs.path(SHA).read_bytes() == BLOB
    assert peer.requests == [{}, {"Range": f"bytes={3 * 65536}-"}]


def test_a_part_file_left_before_is_continued_and_hashed_with_the_rest(tmp_path):
    peer = Peer(BLOB)
    core, blob = fetch(tmp_path, peer, part=BLOB[:1_000_000])
    assert core.blobs.path(SHA).read_bytes() == BLOB
    assert peer.requests == [{"Range": "bytes=1000000-"}]


def test_a_wrong_part_file_fails_the_hash_and_the_blob_is_fetched_again_whole(tmp_path):
    peer = Peer(BLOB)
    core, blob = fetch(tmp_path, peer, part=b"x" * 1_000_000)   # not the blob's first bytes
    assert core.blobs.path(SHA).read_bytes() == BLOB
    assert peer.requests == [{"Range": "bytes=1000000-"}, {}]


def test_a_peer_that_ignores_the_range_sends_it_all_and_it_is_taken_from_the_start(tmp_path):
    peer = Peer(BLOB, answers=[(200, BLOB, None)])
    core, blob = fetch(tmp_path, peer, part=BLOB[:500_000])
    assert core.blobs.path(SHA).read_bytes() == BLOB and len(peer.requests) == 1


def test_a_complete_part_file_is_verified_when_the_peer_answers_416(tmp_path):
    peer = Peer(BLOB)
    core, blob = fetch(tmp_path, peer, part=BLOB)
    assert core.blobs.path(SHA).read_bytes() == BLOB and peer.requests == [{"Range": f"bytes={len(BLOB)}-"}]


def test_a_corrupted_transfer_is_refused_and_nothing_is_kept(tmp_path):
    bad = bytearray(BLOB)
    bad[5_000_000] ^= 1
    peer = Peer(bytes(bad))
    with pytest.raises(PeerError, match="hash mismatch"):
        fetch(tmp_path, peer, retries=2)
    assert not (tmp_path / "blobs" / SHA[:2] / SHA).exists()
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    assert peer.requests == [{}, {}]     # every attempt from the start, none resumed from bad bytes


def test_a_blob_larger_than_announced_is_refused(tmp_path):
    peer = Peer(BLOB + b"more")
    with pytest.raises(PeerError, match="larger than"):
        fetch(tmp_path, peer, retries=2)
    assert not (tmp_path / "blobs" / SHA[:2] / SHA).exists()
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


# -- the blob store's streamed writers ---------------------------------------------------------
def test_stream_writer_hashes_and_writes_in_batches_off_the_loop(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    threads = set()
    writer = store.writer()
    real = writer.write_many

    def spy(chunks):
        threads.add(threading.current_thread().name)
        real(chunks)

    writer.write_many = spy

    async def run():
        up = StreamWriter(writer, batch=1 << 20)
        for i in range(0, len(BLOB), 100_000):
            await up.write(BLOB[i:i + 100_000])
        return (await up.finish()).commit()

    blob = asyncio.run(run())
    assert (blob.sha256, blob.size) == (SHA, len(BLOB)) and store.path(SHA).read_bytes() == BLOB
    assert threads and threading.main_thread().name not in threads


def test_stream_writer_refuses_a_body_over_the_cap_as_it_arrives(tmp_path):
    store = BlobStore(tmp_path / "blobs")

    async def run():
        up = StreamWriter(store.writer(max_size=250_000), batch=1 << 20)
        try:
            for i in range(0, len(BLOB), 100_000):
                await up.write(BLOB[i:i + 100_000])
        except TooLarge:
            up.abort()
            return i
        raise AssertionError("not refused")

    assert asyncio.run(run()) == 200_000       # the third piece crosses the cap
    assert list(store.tmp_dir.iterdir()) == []


def test_stream_writer_raises_the_threads_error_and_abort_removes_the_file(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    writer = store.writer()

    def broken(chunks):
        raise OSError(28, "No space left on device")

    writer.write_many = broken

    async def run():
        up = StreamWriter(writer, batch=100_000)
        with pytest.raises(OSError, match="No space"):
            for i in range(0, len(BLOB), 100_000):
                await up.write(BLOB[i:i + 100_000])
        up.abort()

    asyncio.run(run())
    assert list(store.tmp_dir.iterdir()) == []


def test_resume_hashes_what_is_there_and_restart_drops_it(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    (store.tmp_dir / "x.part").write_bytes(BLOB[:300_000])
    w = store.resume("x.part")
    assert w.size == 300_000
    w.write(BLOB[300_000:])
    assert w.commit(SHA).sha256 == SHA
    (store.tmp_dir / "y.part").write_bytes(b"stale")
    w = store.resume("y.part")
    w.restart()
    w.write(b"fresh")
    assert w.commit().sha256 == hashlib.sha256(b"fresh").hexdigest()
    with pytest.raises(ValueError):
        store.resume("../escape")


def test_a_seed_is_extracted_once_however_many_renders_ask_at_once(tmp_path, monkeypatch):
    import io
    import tarfile
    import time

    from distren.server import core as core_mod
    from distren.server.config import ServerConfig
    from distren.server.core import Core

    core = Core(ServerConfig(name="me", data=tmp_path / "data", slots=2, intake_processes=0), backends={})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = 1000
        tar.addfile(info, io.BytesIO(b"d" * 1000))
    w = core.blobs.writer()
    w.write(buf.getvalue())
    seed = w.commit()
    calls = []
    real = core_mod.safe_extract

    def slow_extract(*args, **kw):
        calls.append(threading.current_thread().name)
        time.sleep(0.2)     # long enough for every other thread to ask meanwhile
        return real(*args, **kw)

    monkeypatch.setattr(core_mod, "safe_extract", slow_extract)
    got = []
    threads = [threading.Thread(target=lambda: got.append(core.scene(seed.sha256))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(calls) == 1
        assert len(got) == 4 and all(p == core.scenes_dir / seed.sha256 for p in got)
        assert (core.scenes_dir / seed.sha256 / "data.bin").read_bytes() == b"d" * 1000
        assert core._scene_locks == {}
    finally:
        core.close()
