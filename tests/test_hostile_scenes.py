"""Hostile scenes against a real server: the sandbox keeps the host's files in and out."""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path


HEADER = '#version 3.7;\nglobal_settings { assumed_gamma 1.0 }\ncamera { location <0,0,-3> look_at 0 }\n'


def render_scene(server, tmp_path: Path, body: str, name: str = "evil") -> tuple[dict, dict]:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)  # may hold more files of the job already
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


def leaking_scene(path: str) -> str:
    """A scene that reads the number in the file `path` and shows it twice: in its log
    (`#debug`) and in a file of its output. POV-Ray's own file-I/O restrictions do not hold in
    Debian's build: only the sandbox keeps `path` out of reach."""
    return (f'#fopen F "{path}" read\n#read (F, Secret)\n#fclose F\n'
            '#debug concat("LEAK:", str(Secret, 0, 0), "\\n")\n'
            '#fopen O "/job/_distren/out/leak.txt" write\n#write (O, str(Secret, 0, 0))\n#fclose O\n'
            'sphere { 0, 1 pigment { rgb 1 } }\n')


def secret(path: Path) -> str:
    """Write a number only this test knows into path (POV-Ray can #read it); return it."""
    number = str(uuid.uuid4().int % 10**9 + 10**9)
    path.write_text(number + "\n")
    return number


def assert_unreachable(server, tmp_path: Path, path: Path, name: str) -> None:
    """A scene reading `path` fails where it opens it, and the number in it shows nowhere."""
    number = secret(path)
    info, frame = render_scene(server, tmp_path, leaking_scene(str(path)), name=name)
    assert number not in frame["log"] and "LEAK:" not in frame["log"], f"{path} was read"
    assert info["state"] == "failed", f"{path}: the scene rendered"
    # it tried, and POV-Ray could not open the file (POV-Ray wraps its messages at 80 columns)
    assert "Parse Error: Cannot open user file" in " ".join(frame["log"].split())
    assert path.name in "".join(frame["log"].split())   # a long path is wrapped too


def test_scene_cannot_read_host_files(server, tmp_path):
    # the same scene reads a file inside its job and shows the number: the leak would show
    inside = tmp_path / "inside"
    inside.mkdir()
    number = secret(inside / "inside.txt")
    info, frame = render_scene(server, tmp_path, leaking_scene("inside.txt"), name="inside")
    assert info["state"] == "done" and f"LEAK:{number}" in frame["log"]
    out = tmp_path / "inside.tar"
    server.client().download(frame["url"], out)
    with tarfile.open(out) as t:
        assert t.extractfile("leak.txt").read().decode().strip() == number
    # a file outside the job: here the test's own folder, in the host's /tmp
    assert_unreachable(server, tmp_path, tmp_path / "outside.txt", "outside")


def test_scene_cannot_read_the_data_folder(server, tmp_path):
    # beside the server's database, and beside the job's own scene folder on the server
    assert_unreachable(server, tmp_path, server.data / "secret.txt", "data")
    assert_unreachable(server, tmp_path, server.data / "scenes" / "secret.txt", "scenes")


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
