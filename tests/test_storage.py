"""Storage: a deleted job's blobs, scene folder and previews are reclaimed while a job that
shares its seed keeps working; bundles of running jobs are kept by their count of done frames;
GET /api/v1/server reports disk use; --min-free-bytes refuses packages with 507;
--keep-finished deletes old finished jobs except those other jobs wait for; a renderer frees
its copies of a peer's blobs; a kill -9 in the middle leaves nothing dangling (the start-up
sweep removes the orphans). Real server processes, real tarballs, the toy plug-in backend
(tests/plugins/toy: a render costs about 0.1 s)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import sqlite3
import tarfile
import stat
import time
from pathlib import Path

import httpx

from conftest import TOY_ENV, ServerProcess, run_cli, wait_for
from distren.scheduler import Scheduler
from distren.store import db
from distren.store.blobs import Blob

API = "/api/v1"
# one client for every request (a new httpx client per request costs about 80 ms here)
HTTP = httpx.Client(timeout=60)


def toy_package(path: Path, tag: str, frames: int = 1, depends: tuple[str, ...] = (), chunk: int | None = None) -> Path:
    """A toy job of `frames` frames whose seed is unique to `tag` (the scene's comment)."""
    scene = (f"# {tag}\nsize 8 6\nframes 0 {frames - 1}\nbackground 0 0 60\n"
             "disc 2 3 2 255 200 0 1 0\n").encode()
    deps = "".join(f"<depends>{d}</depends>" for d in depends)
    xml = (f'<distrenjob version="1"><name>{tag}</name>' + (f"<chunk>{chunk}</chunk>" if chunk else "")
           + '<backend name="toy"><scene>scene.toy</scene></backend>'
           f'<frames><range first="0" last="{frames - 1}">{deps}</range></frames></distrenjob>').encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("distrenjob.xml", xml), ("scene.toy", scene)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def submit(s: ServerProcess, pkg: Path) -> int:
    r = HTTP.post(s.url + API + "/jobs", content=pkg.read_bytes())
    assert r.status_code == 201, r.text
    return r.json()["id"]


def job(s: ServerProcess, j: int) -> dict | None:
    r = HTTP.get(f"{s.url}{API}/jobs/{j}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.json()


def wait_state(s: ServerProcess, j: int, *states: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (info := job(s, j)) and info["state"] in states and info, timeout, f"job {j} {states}")


def delete(s: ServerProcess, j: int) -> None:
    r = HTTP.delete(f"{s.url}{API}/jobs/{j}")
    assert r.status_code == 200, r.text


def get(s: ServerProcess, path: str) -> httpx.Response:
    r = HTTP.get(s.url + API + path)
    assert r.status_code == 200, (path, r.text)
    return r


def stored(data: Path) -> dict[str, int]:
    """Every file a job leaves in the data folder (blobs, scenes, previews) with its size;
    not the database, nor the scratch folders (tmp, work, trash, blobs/tmp). A file that goes
    while the folders are walked (a running server reclaims it) is not counted."""
    out = {}
    for top in ("blobs", "scenes", "previews"):
        for folder, _, names in os.walk(data / top):   # (a folder that goes meanwhile is skipped)
            for name in names:
                p = Path(folder) / name
                if p.relative_to(data).as_posix().startswith("blobs/tmp/"):
                    continue
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[p.relative_to(data).as_posix()] = st.st_size
    return out


def database_bytes(data: Path) -> dict[str, int]:
    """The database's files' sizes, and under "pages" its own size in bytes as a reader sees it
    (WAL included: the main file alone depends on whether a checkpoint has run yet)."""
    sizes = {p.name: p.stat().st_size for p in data.glob("distren.sqlite3*")}
    conn = sqlite3.connect(data / "distren.sqlite3")
    try:
        sizes["pages"] = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return sizes


def storage(s: ServerProcess) -> dict:
    return get(s, "/server").json()["storage"]


def metric(s: ServerProcess, name: str) -> float:
    text = HTTP.get(s.url + "/metrics").text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def test_a_hundred_jobs_submitted_and_deleted_leave_the_data_folder_as_it_was(server_factory, tmp_path):
    s = server_factory(slots=1, env=TOY_ENV)
    shared = toy_package(tmp_path / "shared.tar", "shared", frames=2)
    keeper = submit(s, shared)
    wait_state(s, keeper, "done")
    output = get(s, f"/jobs/{keeper}/frames/1/output").content
    bundle = get(s, f"/jobs/{keeper}/bundle").content
    get(s, f"/jobs/{keeper}/frames/0/preview")
    before, db_before = stored(s.data), database_bytes(s.data)
    assert any(k.startswith("scenes/") for k in before) and any(k.startswith("previews/") for k in before)
    wait_for(lambda: storage(s)["blobs"] == sum(v for k, v in before.items() if k.startswith("blobs/")),
             10, "the blobs' bytes in GET /server")

    for i in range(100):
        own = submit(s, toy_package(tmp_path / "own.tar", f"job {i}", frames=2))
        twin = submit(s, shared)   # the keeper's seed and scene again
        if i % 20 == 0:   # some of them render: outputs, a bundle and a preview to reclaim
            for j in (own, twin):
                wait_state(s, j, "done")
            get(s, f"/jobs/{own}/bundle")
            get(s, f"/jobs/{own}/frames/0/preview")
        if i % 2:
            delete(s, twin)
            delete(s, own)
        else:
            delete(s, own)
            delete(s, twin)
        if i % 25 == 5:   # the same package again, just after its job was deleted: a new reference
            again = submit(s, tmp_path / "own.tar")
            wait_state(s, again, "done")
            time.sleep(1.5)   # the collector has run
            seed = job(s, again)["seed"]["sha256"]
            assert (s.data / "blobs" / seed[:2] / seed).is_file() and (s.data / "scenes" / seed).is_dir()
            get(s, f"/jobs/{again}/bundle")
            delete(s, again)
        # the job that shares the seed is as it was
        assert get(s, f"/jobs/{keeper}/frames/1/output").content == output
        if i % 10 == 0:
            assert get(s, f"/jobs/{keeper}/bundle").content == bundle

    try:
        wait_for(lambda: stored(s.data) == before, 30, "the data folder to hold what it held before")
    except AssertionError:
        now = stored(s.data)
        conn = sqlite3.connect(s.data / "distren.sqlite3")
        try:
            free = conn.execute("SELECT sha256 FROM blob_free").fetchall()
        finally:
            conn.close()
        raise AssertionError(f"the data folder differs: more {sorted(set(now) - set(before))}, "
                             f"less {sorted(set(before) - set(now))}, other sizes "
                             f"{sorted(k for k in set(now) & set(before) if now[k] != before[k])}; "
                             f"blob_free {free}; GET /server {storage(s)}") from None
    assert get(s, f"/jobs/{keeper}/bundle").content == bundle
    info = wait_for(lambda: (st := storage(s))["blobs"] == sum(v for k, v in before.items() if k.startswith("blobs/"))
                    and st, 10, "GET /server's count of the blobs' bytes")
    assert info["scenes"] == sum(v for k, v in before.items() if k.startswith("scenes/"))
    # the database reuses the pages it freed; its WAL is cut back to 4 MiB when it starts over
    # (a checkpoint every second, then a write)
    time.sleep(1.5)
    HTTP.patch(f"{s.url}{API}/jobs/{keeper}", json={"priority": 1})
    db_after = database_bytes(s.data)
    print(f"database files before {db_before}, after 200 jobs {db_after}")
    assert db_after["pages"] - db_before["pages"] <= 64 * 1024
    assert db_after["distren.sqlite3-wal"] <= db.WAL_SIZE_LIMIT
    # nothing refers to a blob that is gone, and nothing unreferenced is left
    conn = sqlite3.connect(s.data / "distren.sqlite3")
    try:
        refs = dict(conn.execute("SELECT sha256, refs FROM blob_refs").fetchall())
        left = conn.execute("SELECT COUNT(*) FROM blob_free").fetchone()[0]
    finally:
        conn.close()
    blobs = {k.rsplit("/", 1)[1] for k in before if k.startswith("blobs/")}
    assert set(refs) == blobs and all(n > 0 for n in refs.values()) and left == 0


def test_disk_use_in_get_server_follows_a_job_and_its_delete(server_factory, tmp_path):
    s = server_factory(slots=0, env=TOY_ENV)
    st = storage(s)
    assert st["blobs"] == 0 and st["scenes"] == 0 and st["free"] > 0 and st["min_free"] == 1024**3
    assert st["low"] is False and st["scratch"] >= 0 and st["previews"] == 0
    pkg = toy_package(tmp_path / "a.tar", "a", frames=3)
    j = submit(s, pkg)
    st = storage(s)
    assert st["blobs"] == pkg.stat().st_size
    scene = s.data / "scenes" / hashlib.sha256(pkg.read_bytes()).hexdigest()
    assert st["scenes"] == sum(p.stat().st_size for p in scene.rglob("*") if p.is_file()) > 0
    delete(s, j)
    wait_for(lambda: (st := storage(s))["blobs"] == 0 and st["scenes"] == 0, 10, "blobs and scenes at 0")
    assert not scene.exists() and stored(s.data) == {}


def test_a_running_jobs_bundle_is_made_once_per_count_of_done_frames(server_factory, tmp_path):
    s = server_factory(slots=1, env=TOY_ENV)
    j = submit(s, toy_package(tmp_path / "b.tar", "b", frames=4, chunk=1))
    # paused with some frames done and some not (a frame takes about 0.1 s)
    for _ in range(50):
        HTTP.post(f"{s.url}{API}/jobs/{j}/pause")
        info = wait_for(lambda: (i := job(s, j))["frames"]["running"] == 0 and i, 30, "no frame running")
        if 1 <= info["frames"]["done"] < 4:
            break
        HTTP.post(f"{s.url}{API}/jobs/{j}/resume")
        time.sleep(0.05)
    done = info["frames"]["done"]
    assert 1 <= done < 4
    built = metric(s, "distren_bundles_built_total")
    first = get(s, f"/jobs/{j}/bundle")
    again = get(s, f"/jobs/{j}/bundle")
    assert first.content == again.content and len(tarfile.open(fileobj=io.BytesIO(first.content)).getnames()) == done
    assert metric(s, "distren_bundles_built_total") == built + 1   # the second request made nothing
    partial = first.headers["x-distren-sha256"]
    partial_path = s.data / "blobs" / partial[:2] / partial
    assert partial_path.is_file() and hashlib.sha256(first.content).hexdigest() == partial

    HTTP.post(f"{s.url}{API}/jobs/{j}/resume")
    wait_state(s, j, "done")
    whole = get(s, f"/jobs/{j}/bundle")
    assert whole.headers["x-distren-sha256"] != partial
    assert len(tarfile.open(fileobj=io.BytesIO(whole.content)).getnames()) == 4
    assert get(s, f"/jobs/{j}/bundle").content == whole.content
    assert metric(s, "distren_bundles_built_total") == built + 2
    wait_for(lambda: not partial_path.exists(), 10, "the replaced partial bundle to be reclaimed")


def test_min_free_bytes_refuses_packages_with_507_and_says_so_once(server_factory, tmp_path):
    s = server_factory(slots=0, env=TOY_ENV, extra=["--min-free-bytes", str(10**18)])
    pkg = toy_package(tmp_path / "c.tar", "c")
    for _ in range(3):
        r = HTTP.post(s.url + API + "/jobs", content=pkg.read_bytes())
        assert r.status_code == 507
        err = r.json()["error"]
        assert err["code"] == "storage_full" and "--min-free-bytes" in err["message"]
    st = storage(s)
    assert st["low"] is True and st["min_free"] == 10**18 and st["blobs"] == 0
    r = run_cli("submit", str(pkg), "--server", s.url, env=TOY_ENV)
    assert r.returncode != 0 and "--min-free-bytes" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert s.log.read_text().count("below --min-free-bytes") == 1
    assert stored(s.data) == {} and not any((s.data / "tmp").iterdir())


def test_keep_finished_deletes_old_finished_jobs_but_not_those_others_wait_for(farm, tmp_path):
    # 0.00003 days = 2.6 s. A peer that never answers keeps the waiting job waiting.
    s = farm.add("alpha", 1, ["ghost"], extra=["--keep-finished", "0.00003"], env=TOY_ENV)
    farm.start()
    old = submit(s, toy_package(tmp_path / "old.tar", "old"))
    needed = submit(s, toy_package(tmp_path / "needed.tar", "needed"))
    waiting = submit(s, toy_package(tmp_path / "waiting.tar", "waiting",
                                    depends=(f"distren://alpha/{needed}/0", "distren://ghost/1/0")))
    for j in (old, needed):
        wait_state(s, j, "done")
    old_seed = job(s, old)["seed"]["sha256"]
    wait_for(lambda: job(s, old) is None, 15, "the old finished job to be deleted")
    needed_info = job(s, needed)
    assert needed_info is not None and needed_info["state"] == "done"   # a frame of `waiting` waits for it
    assert job(s, waiting)["state"] == "queued"
    assert not (s.data / "scenes" / old_seed).exists()
    time.sleep(3)
    assert job(s, needed) is not None
    HTTP.post(f"{s.url}{API}/jobs/{waiting}/cancel")
    wait_for(lambda: job(s, waiting) is None and job(s, needed) is None, 20, "both to be deleted")
    assert "--keep-finished" in s.log.read_text()
    wait_for(lambda: stored(s.data) == {}, 10, "an empty data folder")


def test_a_renderer_frees_its_copies_of_a_peers_blobs(farm, tmp_path):
    home = farm.add("alpha", 0, ["beta"], env=TOY_ENV)
    renderer = farm.add("beta", 1, ["alpha"], extra=["--keep-peer-copies", "0"], env=TOY_ENV)
    farm.start()
    j = submit(home, toy_package(tmp_path / "d.tar", "d", frames=3))
    wait_state(home, j, "done")
    # the seed, its scene and the outputs were on beta while it rendered; now nothing is
    wait_for(lambda: stored(renderer.data) == {}, 15, "beta's copies to be freed")
    assert storage(renderer)["blobs"] == 0
    assert len(tarfile.open(fileobj=io.BytesIO(get(home, f"/jobs/{j}/bundle").content)).getnames()) == 3


def test_a_kill_9_while_reclaiming_or_taking_a_package_in_leaves_no_dangling_reference(tmp_path):
    data = tmp_path / "data"
    pkg = toy_package(tmp_path / "e.tar", "e", frames=2)
    other = toy_package(tmp_path / "f.tar", "f")
    # killed while moving a deleted job's blobs to the trash, before their rows are gone
    s = ServerProcess(data, "alpha", 1, env={**TOY_ENV, "DISTREN_FAILPOINT": "reclaim"}).start()
    keep = submit(s, other)
    j = submit(s, pkg)
    wait_state(s, j, "done")
    wait_state(s, keep, "done")
    delete(s, j)
    assert s.proc.wait(timeout=30) == -signal.SIGKILL
    s._logf.close()
    assert any((data / "trash").iterdir())
    # killed after a package was stored and before its job was recorded: an orphan seed
    s = ServerProcess(data, "alpha", 1, env={**TOY_ENV, "DISTREN_FAILPOINT": "intake"}).start()
    orphan = hashlib.sha256(toy_package(tmp_path / "g.tar", "g").read_bytes()).hexdigest()
    try:
        HTTP.post(s.url + API + "/jobs", content=(tmp_path / "g.tar").read_bytes())
    except httpx.HTTPError:
        pass
    assert s.proc.wait(timeout=30) == -signal.SIGKILL
    s._logf.close()
    assert (data / "blobs" / orphan[:2] / orphan).is_file() and (data / "scenes" / orphan).is_dir()

    s = ServerProcess(data, "alpha", 1, env=TOY_ENV).start()
    try:
        kept = job(s, keep)
        assert kept["state"] == "done"
        wanted = {f"blobs/{h[:2]}/{h}" for h in [kept["seed"]["sha256"]]
                  + [f["output"]["sha256"] for f in get(s, f"/jobs/{keep}/frames").json()]}
        wait_for(lambda: {k for k in stored(s.data) if k.startswith("blobs/")} == wanted, 10,
                 "only the remaining job's blobs")
        assert set(stored(s.data)) == wanted | {k for k in stored(s.data) if k.startswith(f"scenes/{kept['seed']['sha256']}/")}
        # (the blobs leave their folder for the trash, which is emptied right after)
        wait_for(lambda: not any((data / "trash").iterdir()), 10, "the trash emptied")
        assert get(s, f"/jobs/{keep}/frames/0/output").content
    finally:
        s.stop()


def test_reference_counts_follow_every_cell_that_names_a_blob(tmp_path):
    """The triggers of blob_refs, on the real scheduler and SQLite: seeds, outputs, uploads,
    bundles and peers' outputs; two jobs that share a seed and an output."""
    from distren.job.spec import parse_job_xml

    conn = db.connect(tmp_path / "distren.sqlite3")
    s = Scheduler(conn, "alpha")

    def refs() -> dict[str, int]:
        return dict(conn.execute("SELECT sha256, refs FROM blob_refs").fetchall())

    def free() -> list[str]:
        return [r[0] for r in conn.execute("SELECT sha256 FROM blob_free ORDER BY id")]

    xml = (b'<distrenjob version="1"><name>x</name><backend name="toy"><scene>s.toy</scene></backend>'
           b'<frames><frame id="0"/><frame id="1"><depends>distren://beta/4/0</depends></frame></frames></distrenjob>')
    seed, out = Blob("5" * 64, 10), Blob("0" * 64, 3)
    jobs = []
    for _ in range(2):
        j = s.begin_job()
        s.activate_job(j, parse_job_xml(xml, "alpha", j, 10), seed)
        lease = s.claim("local:alpha", ["toy"], 60)
        s.complete(lease.job, lease.frame, lease.attempt, out, "alpha", "")
        jobs.append(j)
    assert refs() == {seed.sha256: 2, out.sha256: 2} and free() == []
    s.set_remote_dep("beta", 4, 0, "done", Blob("b" * 64, 1))
    s.set_cached_bundle(jobs[0], "done:1", "c" * 64)
    assert refs() == {seed.sha256: 2, out.sha256: 2, "b" * 64: 1, "c" * 64: 1}
    s.set_cached_bundle(jobs[0], "done:2", "d" * 64)
    assert "c" * 64 not in refs() and refs()["d" * 64] == 1 and free() == ["c" * 64]
    s.delete(jobs[0])
    assert refs() == {seed.sha256: 1, out.sha256: 1, "b" * 64: 1} and free() == ["c" * 64, "d" * 64]
    s.delete(jobs[1])   # the last job that waited on beta's frame: its output goes too
    assert refs() == {} and sorted(free()) == sorted(["c" * 64, "d" * 64, out.sha256, seed.sha256, "b" * 64])
    assert conn.execute("SELECT COUNT(*) FROM remote_deps").fetchone()[0] == 0
