"""Outputs kept unpacked for the frames that wait for them (store/unpacked.py): a frame rendered
here that a waiting frame here depends on leaves its files unpacked, and the dependent's
preparation moves them into its work folder instead of unpacking the tarball. Real files and
tarballs for the store itself; real servers and POV-Ray renders for the whole path."""

from __future__ import annotations

import os
import stat
import tarfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import dependent_package, failing_package, make_scene, pixels, run_cli, wait_for
from distren.store.blobs import BlobStore
from distren.store.unpacked import UnpackedOutputs, stage
from distren.tarballs import TarLimits, safe_extract, write_tar

SHA = "ab" * 32


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: relative name -> (content, permission bits); folders too."""
    out = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        out[path.relative_to(root).as_posix()] = (path.read_bytes() if path.is_file() else b"<dir>", mode)
    return out


def outputs(folder: Path) -> list[Path]:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"\x89PNG a")
    (folder / "sub" / "b.exr").write_bytes(b"b" * 5000)
    os.chmod(folder / "a.png", 0o600)   # a renderer's own mode: extraction makes it 0644
    return [folder / "a.png", folder / "sub" / "b.exr"]


def test_a_kept_entry_is_what_unpacking_its_tarball_gives(tmp_path):
    files = outputs(tmp_path / "out")
    store = BlobStore(tmp_path / "blobs")
    blob, = store.put_many([lambda f: write_tar(f, [(p.relative_to(tmp_path / "out").as_posix(), p) for p in files])])
    (tmp_path / "deps").mkdir()
    extracted = safe_extract(store.path(blob.sha256), tmp_path, TarLimits(), into=tmp_path / "deps" / "extracted")

    kept = UnpackedOutputs(tmp_path / "unpacked", budget=1 << 20)
    part, size = stage(files, tmp_path / "out", tmp_path)
    assert size == 5006 and not any(p.exists() for p in files)   # moved, not copied
    assert kept.install(blob.sha256, part, size) and not Path(part).exists()
    assert kept.bytes == 5006 and len(kept) == 1
    assert kept.take(blob.sha256, tmp_path / "deps" / "kept")
    assert tree(tmp_path / "deps" / "kept") == tree(extracted)
    assert stat.S_IMODE((tmp_path / "deps" / "kept").stat().st_mode) == stat.S_IMODE(extracted.stat().st_mode)
    assert kept.bytes == 0 and len(kept) == 0
    # used once: a second dependent unpacks the tarball
    assert not kept.take(blob.sha256, tmp_path / "deps" / "again")
    assert not (tmp_path / "deps" / "again").exists()


def test_links_and_other_files_are_not_kept(tmp_path):
    kept = UnpackedOutputs(tmp_path / "unpacked", budget=1 << 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "host.txt").write_text("a file of the host")
    os.symlink(out / "host.txt", out / "link.png")
    assert stage([out / "link.png"], out, tmp_path) is None
    os.link(out / "host.txt", out / "second-name.png")
    assert stage([out / "second-name.png"], out, tmp_path) is None
    os.mkfifo(out / "fifo.png")
    assert stage([out / "fifo.png"], out, tmp_path) is None
    assert stage([out / "missing.png"], out, tmp_path) is None
    assert sorted(p.name for p in out.iterdir()) == ["fifo.png", "host.txt", "link.png", "second-name.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "unpacked"]   # no folder made
    (out / "plain.png").write_text("a plain output")
    part, size = stage([out / "plain.png"], out, tmp_path)
    assert not kept.install("not-a-hash", part, size) and not Path(part).exists()
    assert len(kept) == 0 and kept.bytes == 0
    assert [p.name for p in (tmp_path / "unpacked").iterdir()] == []


def test_the_budget_bounds_the_entries_and_reclaiming_frees_it(tmp_path):
    kept = UnpackedOutputs(tmp_path / "unpacked", budget=10_000)
    trash = tmp_path / "trash"
    trash.mkdir()
    first = outputs(tmp_path / "one")
    second = outputs(tmp_path / "two")
    assert kept.install("01" * 32, *stage(first, tmp_path / "one", tmp_path))
    part, size = stage(second, tmp_path / "two", tmp_path)
    assert not kept.install("02" * 32, part, size)               # 2 x 5006 > 10,000: dropped
    assert not Path(part).exists() and kept.bytes == 5006
    third = outputs(tmp_path / "three")
    assert not kept.install("01" * 32, *stage(third, tmp_path / "three", tmp_path))   # kept once
    kept.discard("01" * 32, trash)                               # its blob is reclaimed
    assert kept.bytes == 0 and not (tmp_path / "unpacked" / ("01" * 32)).exists()
    assert kept.install("02" * 32, *stage(outputs(tmp_path / "four"), tmp_path / "four", tmp_path))
    kept.reset(trash)                                            # start-up: all dropped
    assert kept.bytes == 0 and len(kept) == 0 and list((tmp_path / "unpacked").iterdir()) == []


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def prepared(url: str) -> dict[str, float]:
    samples = scrape(url)
    return {how: samples.get(("distren_dependencies_prepared_total", (("how", how),)), 0.0)
            for how in ("kept", "unpacked")}


def unpacked_bytes(client) -> int:
    return client.server_info()["storage"]["unpacked"]


def test_a_waiting_frame_gets_the_kept_output_and_renders_as_from_the_tarball(server_factory, tmp_path):
    """Job 1 renders frames 0 and 1; jobs 2 and 3 (the same scene) each wait for frame 1. Submitted to a
    server with no slots, then rendered after a restart with one: frame 0's output is kept
    unpacked (frames wait for it), one dependent moves it in, the other unpacks the tarball,
    and both render the same pixels."""
    data = tmp_path / "data-alpha"
    s = server_factory("alpha", slots=0, data=data)
    c = s.client()
    pkg = tmp_path / "first.tar.gz"
    assert run_cli("pack", str(make_scene(tmp_path / "first", final=1)), "-o", str(pkg)).returncode == 0
    job1 = c.submit(pkg)
    dep = f"distren://alpha/{job1['id']}/1"
    job2 = c.submit(dependent_package(tmp_path / "second", dep, "scene1.png"))
    job3 = c.submit(dependent_package(tmp_path / "third", dep, "scene1.png"))
    s.stop()
    s = server_factory("alpha", slots=1, data=data)
    c = s.client()
    for job in (job1, job2, job3):
        assert c.wait(job["url"], interval=0.1, timeout=120)["state"] == "done", c.frame(f"{job['url']}/0")
    assert prepared(s.url) == {"kept": 1, "unpacked": 1}
    assert unpacked_bytes(c) == 0   # the entry was used up
    images = []
    for job in (job2, job3):
        out = tmp_path / f"out-{job['id']}.tar"
        c.download(f"{job['url']}/0", out)
        with tarfile.open(out) as t:
            t.extractall(tmp_path / f"x-{job['id']}", filter="data")
        images.append(pixels(tmp_path / f"x-{job['id']}" / "use0.png"))
    assert images[0] == images[1]


def test_a_kept_output_nobody_takes_goes_with_its_job(server_factory, tmp_path):
    """Job 2 waits for frames 1 and 2 of job 1; frame 2 fails, so job 2 fails without taking
    frame 1's kept output: deleting job 1 (its output reclaimed) drops it."""
    data = tmp_path / "data-alpha"
    s = server_factory("alpha", slots=0, data=data)
    c = s.client()
    job1 = c.submit(failing_package(tmp_path / "first", final=2, failing=2))
    second = tmp_path / "second"
    dependent_package(second, f"distren://alpha/{job1['id']}/1", "scene1.png")
    xml = (second / "distrenjob.xml").read_text()
    (second / "distrenjob.xml").write_text(xml.replace(
        "</depends>", f"</depends><depends>distren://alpha/{job1['id']}/2</depends>"))
    pkg2 = tmp_path / "second.tar"
    with tarfile.open(pkg2, "w") as t:
        t.add(second / "distrenjob.xml", "distrenjob.xml")
        t.add(second / "use.pov", "use.pov")
    job2 = c.submit(pkg2)
    s.stop()
    s = server_factory("alpha", slots=1, data=data, extra=["--max-failures", "1"])
    c = s.client()
    assert c.wait(job1["url"], interval=0.1, timeout=120)["state"] == "failed"
    assert c.wait(job2["url"], interval=0.1, timeout=60)["state"] == "failed"
    assert c.frame(f"{job1['url']}/1")["state"] == "done"
    assert unpacked_bytes(c) > 0
    c.delete(job2["url"])
    c.delete(job1["url"])
    deadline = time.monotonic() + 20
    while unpacked_bytes(c) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert unpacked_bytes(c) == 0
    assert list((data / "unpacked").iterdir()) == []
    assert prepared(s.url) == {"kept": 0, "unpacked": 0}


def test_the_pins_of_many_dependencies_are_let_go_off_the_event_loop(tmp_path):
    """A video frame holds a pin per dependency: `Storage.release_many` lets go of them in a
    thread, and all of them go (real blob store and Core)."""
    import asyncio
    import threading

    from distren.server.config import ServerConfig
    from distren.server.core import Core
    from distren.server.storage import RELEASE_IN_THREAD

    core = Core(ServerConfig(name="me", data=tmp_path / "data", slots=1, intake_processes=0), backends={})
    try:
        blobs = core.blobs.put_many([lambda f, i=i: f.write(b"%d" % i) for i in range(RELEASE_IN_THREAD + 5)])
        hashes = [b.sha256 for b in blobs]
        assert all(core.blobs.pinned(h) for h in hashes)

        threads = []
        real = core.blobs.release

        def release(sha256s):
            threads.append(threading.get_ident())
            real(sha256s)

        core.blobs.release = release

        async def let_go() -> int:
            core.storage.release_many(hashes)
            for _ in range(200):
                if not any(core.blobs.pinned(h) for h in hashes):
                    break
                await asyncio.sleep(0.01)
            return threading.get_ident()

        loop_thread = asyncio.run(let_go())
        assert threads and threads[0] != loop_thread     # in a thread, not on the loop
        assert not any(core.blobs.pinned(h) for h in hashes)
        few = core.blobs.put_many([lambda f: f.write(b"few")])
        core.storage.release_many([few[0].sha256])   # few: at once
        assert not core.blobs.pinned(few[0].sha256)
    finally:
        core.close()


def test_a_work_folder_of_many_dependencies_is_removed_by_a_process_of_its_own(tmp_path, monkeypatch):
    import asyncio

    from distren.server.runner import _remove_work

    work = tmp_path / "work"
    for i in range(300):
        (work / "deps" / "s" / "1" / str(i)).mkdir(parents=True)
        (work / "deps" / "s" / "1" / str(i) / "f.png").write_bytes(b"x")
    with monkeypatch.context() as m:   # not by a thread of this process
        m.setattr(asyncio, "to_thread", None)
        asyncio.run(_remove_work(work, many=True))
    assert not work.exists()
    (tmp_path / "small" / "out").mkdir(parents=True)
    asyncio.run(_remove_work(tmp_path / "small", many=False))
    assert not (tmp_path / "small").exists()


def test_a_start_up_after_one_killed_while_emptying_the_trash(server_factory, tmp_path):
    """Kept outputs are dropped at start-up, also when a start-up killed while emptying the
    trash left a folder of the same kind there."""
    data = tmp_path / "data-alpha"
    server_factory("alpha", slots=1, data=data).stop()
    (data / "trash" / "unpacked" / ("ab" * 32)).mkdir(parents=True)
    (data / "trash" / "unpacked" / ("ab" * 32) / "a.png").write_bytes(b"left over")
    (data / "unpacked" / ("cd" * 32)).mkdir(parents=True)
    (data / "unpacked" / ("cd" * 32) / "b.png").write_bytes(b"kept before the stop")
    s = server_factory("alpha", slots=1, data=data)
    assert s.client().server_info()["storage"]["unpacked"] == 0
    assert list((data / "unpacked").iterdir()) == []
    assert wait_for(lambda: not any((data / "trash").iterdir()), 10, "the trash emptied")
