"""Hostile scenes against a real server: the sandbox keeps the host's files in and out."""

from __future__ import annotations

import socket
import tarfile
import uuid
from pathlib import Path


HEADER = '#version 3.7;\nglobal_settings { assumed_gamma 1.0 }\ncamera { location <0,0,-3> look_at 0 }\n'


def render_scene(server, tmp_path: Path, body: str, name: str = "evil") -> tuple[dict, dict]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.pov").write_text(HEADER + body)
    # written by hand: `distren pack` itself refuses scenes that name absolute paths
    (folder / "distrenjob.xml").write_text(
        f'<distrenjob><name>{name}</name><backend name="povray"><scene>{name}.pov</scene>'
        '<width>8</width><height>6</height></backend><frames><frame id="0"/></frames></distrenjob>')
    pkg = tmp_path / f"{name}.tar"
    with tarfile.open(pkg, "w") as t:
        for p in folder.iterdir():
            t.add(p, p.name)
    client = server.client()
    job = client.submit(pkg)
    info = client.wait(job["url"], interval=0.2, timeout=60)
    return info, client.frame(f"{job['url']}/0")


def test_scene_cannot_read_host_files(server, tmp_path):
    host = socket.gethostname()
    body = ('#fopen F "/etc/hostname" read\n#read (F, Line)\n#debug concat("LEAK:", Line, "\\n")\n'
            'sphere { 0, 1 pigment { rgb 1 } }\n')
    info, frame = render_scene(server, tmp_path, body)
    assert info["state"] == "failed"
    assert "LEAK:" not in frame["log"] and f"LEAK:{host}" not in frame["log"]
    assert "/etc/hostname" in frame["log"]  # POV-Ray says it cannot open it


def test_scene_cannot_read_the_data_folder_or_root(server, tmp_path):
    for i, path in enumerate(("/root/.bashrc", str(server.data / "distren.sqlite3"), "/proc/1/environ")):
        body = f'#fopen F "{path}" read\n#read (F, Line)\n#debug concat("LEAK:", Line, "\\n")\n'
        info, frame = render_scene(server, tmp_path, body + "sphere { 0, 1 pigment { rgb 1 } }\n", name=f"r{i}")
        assert "LEAK:" not in frame["log"], path


def test_scene_cannot_write_outside_its_folder(server, tmp_path):
    marker = f"/tmp/distren-escape-{uuid.uuid4().hex}"
    body = (f'#fopen F "{marker}" write\n#write (F, "pwned")\n#fclose F\n'
            f'#fopen G "own-folder.txt" write\n#write (G, "pwned")\n#fclose G\n'
            'sphere { 0, 1 pigment { rgb 1 } }\n')
    info, frame = render_scene(server, tmp_path, body)
    assert not Path(marker).exists()
    # nothing landed in the job's scene folder on the server either
    for scene in (server.data / "scenes").iterdir():
        assert not (scene / "own-folder.txt").exists()


def test_writes_into_the_output_folder_stay_in_the_frame(server, tmp_path):
    body = ('#fopen F "/job/_distren/out/notes.txt" write\n#write (F, "hello")\n#fclose F\n'
            'sphere { 0, 1 pigment { rgb 1 } }\n')
    info, frame = render_scene(server, tmp_path, body)
    assert info["state"] == "done"
    out = tmp_path / "o.tar"
    server.client().download(f"{frame['url']}", out)
    with tarfile.open(out) as t:
        assert sorted(t.getnames()) == ["evil.png", "notes.txt"]


def test_file_size_limit_stops_a_runaway_writer(server_factory, tmp_path):
    s = server_factory("alpha", extra=["--render-file-size", "100000", "--max-failures", "1"])
    body = ('#fopen F "/job/_distren/out/big.txt" write\n#declare I = 0;\n'
            '#while (I < 100000) #write (F, "0123456789") #declare I = I + 1; #end\n#fclose F\n'
            'sphere { 0, 1 pigment { rgb 1 } }\n')
    info, frame = render_scene(s, tmp_path, body)
    assert info["state"] == "failed"
    assert "SIGXFSZ" in frame["error"]


def test_memory_and_cpu_limits_apply_to_the_process(tmp_path):
    import asyncio

    from distren.backends.base import RenderLimits, run_process

    hog = ["python3", "-c", "x = bytearray(600 * 1024 * 1024); print('allocated')"]
    rc, log, _ = asyncio.run(run_process(hog, 30, RenderLimits(memory=300 * 1024 * 1024)))
    assert rc != 0 and "MemoryError" in log
    rc, log, _ = asyncio.run(run_process(hog, 30, RenderLimits(memory=2 * 1024**3)))
    assert rc == 0 and "allocated" in log
    spin = ["python3", "-c", "while True: pass"]
    rc, _, timed_out = asyncio.run(run_process(spin, 30, RenderLimits(cpu_seconds=1)))
    assert not timed_out and rc in (-9, -24)  # SIGXCPU (or SIGKILL at the hard limit)
