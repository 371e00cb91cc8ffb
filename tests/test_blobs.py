"""The blob store's group commit (`BlobStore.put_many`), on a real folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from distren.store import blobs as blobs_mod
from distren.store.blobs import BlobStore


def writes(*contents: bytes):
    return [lambda out, data=data: out.write(data) for data in contents]


@pytest.mark.parametrize("have_syncfs", [True, False])
def test_put_many_publishes_each_blob_under_its_hash(tmp_path, monkeypatch, have_syncfs):
    if not have_syncfs:
        monkeypatch.setattr(blobs_mod, "_syncfs", None)   # the one-fsync-each fallback
    store = BlobStore(tmp_path / "blobs")
    data = [b"frame 0", b"frame 1", b"frame 0", b""]
    got = store.put_many(writes(*data))
    assert [b.sha256 for b in got] == [hashlib.sha256(d).hexdigest() for d in data]
    assert [b.size for b in got] == [len(d) for d in data]
    for blob, content in zip(got, data):
        assert store.path(blob.sha256).read_bytes() == content
    assert list(store.tmp_dir.iterdir()) == []           # the duplicate's temporary file too


def test_put_many_syncs_the_data_before_the_renames_and_the_names_after(tmp_path, monkeypatch):
    """No name is seen before its data is durable (by a writer of the same content, or after a
    crash): one syncfs while the files are all still temporary, one after the renames."""
    calls = []
    store = BlobStore(tmp_path / "blobs")

    def syncfs(fd):
        calls.append((len(list(store.tmp_dir.iterdir())),
                      sorted(p.name for p in store.root.glob("*/*") if p.parent != store.tmp_dir)))
        return 0

    fsyncs = []
    monkeypatch.setattr(blobs_mod, "_syncfs", syncfs)
    monkeypatch.setattr(blobs_mod, "_fsync_path", fsyncs.append)
    got = store.put_many(writes(b"a", b"b", b"c"))
    assert calls == [(3, []), (0, sorted(b.sha256 for b in got))] and fsyncs == []


def test_without_syncfs_each_file_is_fsynced_before_its_rename_and_each_folder_after(tmp_path, monkeypatch):
    store = BlobStore(tmp_path / "blobs")
    order = []
    monkeypatch.setattr(blobs_mod, "_syncfs", None)
    monkeypatch.setattr(blobs_mod, "_fsync_path",
                        lambda p: order.append("dir" if Path(p).is_dir() else "tmp" if Path(p).parent == store.tmp_dir
                                               else "blob"))
    store.put_many(writes(b"a", b"b"))
    assert order[:2] == ["tmp", "tmp"] and set(order[2:]) <= {"blob", "dir"} and "dir" in order[2:]


def test_put_many_leaves_nothing_half_written_when_one_write_fails(tmp_path):
    store = BlobStore(tmp_path / "blobs")

    def broken(out):
        out.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.put_many(writes(b"whole") + [broken])
    assert list(store.tmp_dir.iterdir()) == []
    assert not store.has(hashlib.sha256(b"half").hexdigest())
    assert not store.has(hashlib.sha256(b"whole").hexdigest())   # nothing of the group published


def test_threads_that_ask_at_once_share_syncfs_calls_each_started_after_they_asked(tmp_path, monkeypatch):
    """The group commit of syncfs (`_GroupSync`), with real threads and a slow syncfs: fewer
    calls than callers, and every caller returns only after a sync that began after it asked."""
    import threading
    import time

    began: list[float] = []

    def slow_syncfs(fd):
        began.append(time.monotonic())
        time.sleep(0.05)
        return 0

    monkeypatch.setattr(blobs_mod, "_syncfs", slow_syncfs)
    monkeypatch.setattr(blobs_mod, "_group_syncs", {})
    asked: dict[int, float] = {}
    ended: dict[int, float] = {}

    def caller(i: int) -> None:
        time.sleep(0.005 * i)
        asked[i] = time.monotonic()
        assert blobs_mod._sync_filesystem(tmp_path)
        ended[i] = time.monotonic()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 2 <= len(began) < 12
    for i in range(12):
        # some sync began after i asked and ended (began + 0.05 s) before i returned
        assert any(asked[i] <= b and b + 0.05 <= ended[i] + 1e-3 for b in began), (i, asked[i], began)


def test_without_syncfs_the_caller_is_told_to_fsync(tmp_path, monkeypatch):
    monkeypatch.setattr(blobs_mod, "_syncfs", None)
    assert blobs_mod._sync_filesystem(tmp_path) is False
