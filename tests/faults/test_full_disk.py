"""A data folder that cannot take more (here: RLIMIT_FSIZE on the server, so any file over
3 MB fails to grow): packages and frames fail cleanly with a clear error, the server goes on
serving, and its database stays intact."""

from __future__ import annotations

import os
import sqlite3
import tarfile

import httpx

from conftest import ServerProcess, make_scene, run_cli

LIMIT = 3 * 1024 * 1024


def test_full_disk_fails_cleanly(tmp_path):
    s = ServerProcess(tmp_path / "data", "alpha", 2, prefix=["prlimit", f"--fsize={LIMIT}", "--"]).start()
    try:
        c = s.client()
        ini = make_scene(tmp_path / "ok", final=2)
        small = tmp_path / "ok.tar.gz"
        assert run_cli("pack", str(ini), "-o", str(small)).returncode == 0
        good = c.submit(small)
        assert c.wait(good["url"], interval=0.1, timeout=120)["state"] == "done"

        # a package larger than any file the data folder can still hold
        big_dir = tmp_path / "big"
        make_scene(big_dir, final=1)
        (big_dir / "noise.bin").write_bytes(os.urandom(LIMIT + 1024 * 1024))
        (big_dir / "distrenjob.xml").write_text(
            '<distrenjob><name>big</name><backend name="povray"><ini>scene.ini</ini></backend>'
            '<frames><frame id="0"/></frames></distrenjob>')
        big = tmp_path / "big.tar"
        with tarfile.open(big, "w") as t:
            for p in sorted(big_dir.iterdir()):
                t.add(p, p.name)
        r = httpx.post(s.url + "/api/v1/jobs", content=big.read_bytes(), timeout=60)
        assert r.status_code == 507, r.text
        assert r.json()["error"]["code"] == "storage_full"
        assert not list((s.data / "tmp").iterdir()) and not list((s.data / "blobs" / "tmp").iterdir())

        # a frame whose output cannot be stored fails with the reason; the others are fine
        scene = tmp_path / "writer"
        ini = make_scene(scene, final=1)
        (scene / "scene.pov").write_text((scene / "scene.pov").read_text() + (
            '#if (frame_number = 1)\n#fopen F "/job/_distren/out/huge.txt" write\n#declare I = 0;\n'
            f'#while (I < {LIMIT // 10 + 1000}) #write (F, "0123456789") #declare I = I + 1; #end\n#fclose F\n#end\n'))
        pkg = tmp_path / "writer.tar.gz"
        assert run_cli("pack", str(ini), "-o", str(pkg)).returncode == 0
        r = run_cli("submit", str(pkg), "--server", s.url, "--wait")
        assert r.returncode == 1
        url = r.stdout.strip().splitlines()[0]
        frames = {f["frame"]: f for f in c.frames(url)}
        assert frames[0]["state"] == "done" and frames[1]["state"] == "failed"
        assert "SIGXFSZ" in frames[1]["error"] or "too large" in frames[1]["error"].lower(), frames[1]["error"]

        # still serving, the first job untouched, the database sound
        assert c.job(good["url"])["state"] == "done"
        assert httpx.get(s.url + "/api/v1/server").status_code == 200
    finally:
        s.stop()
    with sqlite3.connect(s.data / "distren.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2
