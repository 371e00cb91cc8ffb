"""The blob store's group commit (`BlobStore.put_many`), on a real folder."""

from __future__ import annotations

import hashlib

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


def test_put_many_syncs_the_data_then_the_names_once_each(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(blobs_mod, "_sync_filesystem", lambda anchor, paths: calls.append((anchor, list(paths))))
    store = BlobStore(tmp_path / "blobs")
    got = store.put_many(writes(b"a", b"b", b"c"))
    assert len(calls) == 2
    (data_anchor, data_paths), (name_anchor, name_paths) = calls
    assert data_anchor == store.tmp_dir and len(data_paths) == 3    # the temporary files, before the renames
    assert name_anchor == store.root
    assert set(name_paths) == {store.path(b.sha256).parent for b in got}


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
