"""Every intake rejection, against a real server process: a 4xx JSON answer naming the problem,
nothing left behind, and the server keeps serving."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import pytest

from conftest import ServerProcess, make_scene

LIMITS = ["--max-frames", "50", "--max-members", "20", "--max-unpacked-bytes", "2000000", "--max-job-bytes", "200000"]

GOOD_XML = """<?xml version="1.0"?>
<distrenjob version="1">
  <name>t</name>
  <backend name="povray"><ini>scene.ini</ini></backend>
  <frames>{frames}</frames>
</distrenjob>
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("intake")
    s = ServerProcess(tmp / "data", "alpha", slots=0, extra=LIMITS).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scene")
    make_scene(d, final=9)
    return d


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:" + compress, format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def package(scene_dir: Path, xml: str | bytes | None = None, frames: str = '<range first="0" last="3"/>',
            extra: list = (), skip: tuple = ()) -> bytes:
    if xml is None:
        xml = GOOD_XML.format(frames=frames)
    members = [file_member("distrenjob.xml", xml.encode() if isinstance(xml, str) else xml)]
    for p in sorted(scene_dir.iterdir()):
        if p.name not in skip:
            members.append(file_member(p.name, p.read_bytes()))
    return tar_bytes(members + list(extra), "gz")


def snapshot(srv: ServerProcess) -> dict:
    data = srv.data
    return {
        "tmp": sorted(p.name for p in (data / "tmp").iterdir()),
        "blobs": sorted(str(p.relative_to(data)) for p in (data / "blobs").rglob("*") if p.is_file()),
        "scenes": sorted(p.name for p in (data / "scenes").iterdir()),
        "jobs": [j["id"] for j in httpx.get(srv.url + "/api/v1/jobs").json()],
    }


def submit(srv: ServerProcess, body: bytes) -> httpx.Response:
    return httpx.post(srv.url + "/api/v1/jobs", content=body, timeout=60)


def assert_refused(srv: ServerProcess, body: bytes, status: int, code: str, *words: str) -> dict:
    before = snapshot(srv)
    resp = submit(srv, body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    for w in words:
        assert w.lower() in err["message"].lower(), err
    assert snapshot(srv) == before
    assert httpx.get(srv.url + "/api/v1/server").status_code == 200
    return err


def link_member(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_good_package_is_accepted(srv, scene_dir):
    resp = submit(srv, package(scene_dir))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["url"] == f"distren://alpha/{body['id']}"
    assert body["total_frames"] == 4


def test_symlink_refused(srv, scene_dir):
    assert_refused(srv, package(scene_dir, extra=[link_member("evil", "/etc/passwd")]), 400, "bad_package", "evil", "link")


def test_hardlink_refused(srv, scene_dir):
    body = package(scene_dir, extra=[link_member("hard", "scene.pov", tarfile.LNKTYPE)])
    assert_refused(srv, body, 400, "bad_package", "hard", "link")


def test_device_refused(srv, scene_dir):
    info = tarfile.TarInfo("null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    assert_refused(srv, package(scene_dir, extra=[(info, None)]), 400, "bad_package", "null")


def test_fifo_refused(srv, scene_dir):
    info = tarfile.TarInfo("pipe")
    info.type = tarfile.FIFOTYPE
    assert_refused(srv, package(scene_dir, extra=[(info, None)]), 400, "bad_package", "pipe")


def test_absolute_name_refused(srv, scene_dir):
    assert_refused(srv, package(scene_dir, extra=[file_member("/tmp/distren-evil", b"x")]), 400, "bad_package", "distren-evil")
    assert not Path("/tmp/distren-evil").exists()


def test_dotdot_refused(srv, scene_dir):
    assert_refused(srv, package(scene_dir, extra=[file_member("a/../../escape.txt", b"x")]), 400, "bad_package", "escape")


def test_member_count_cap(srv, scene_dir):
    extra = [file_member(f"f{i}.txt", b"x") for i in range(25)]
    assert_refused(srv, package(scene_dir, extra=extra), 400, "bad_package", "members")


def test_total_size_cap(srv, scene_dir):
    # 3 MB of zeros compress to a few kB: the unpacked cap (2 MB) must catch it.
    extra = [file_member("big.bin", bytes(3_000_000))]
    assert_refused(srv, package(scene_dir, extra=extra), 400, "bad_package", "big.bin")


def test_name_length_cap(srv, scene_dir):
    assert_refused(srv, package(scene_dir, extra=[file_member("n" * 300, b"x")]), 400, "bad_package", "long")


def test_body_size_cap(srv):
    assert_refused(srv, bytes(250_000), 413, "too_large", "limit")


def test_not_a_tarball(srv):
    assert_refused(srv, b"this is not a tarball at all" * 10, 400, "bad_package", "tar")


def test_truncated_gzip(srv, scene_dir):
    body = package(scene_dir)
    assert_refused(srv, body[: len(body) // 2], 400, "bad_package")


def test_missing_job_xml(srv, scene_dir):
    members = [file_member(p.name, p.read_bytes()) for p in sorted(scene_dir.iterdir())]
    assert_refused(srv, tar_bytes(members, "gz"), 400, "bad_job_xml", "distrenjob.xml")


def test_doctype_refused(srv, scene_dir):
    xml = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>'
           + GOOD_XML.format(frames='<frame id="0"/>').split("?>", 1)[1])
    assert_refused(srv, package(scene_dir, xml=xml), 400, "bad_job_xml", "DOCTYPE")


def test_external_entity_refused(srv, scene_dir):
    xml = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           '<distrenjob><name>&x;</name><backend name="povray"/><frames><frame id="0"/></frames></distrenjob>')
    err = assert_refused(srv, package(scene_dir, xml=xml), 400, "bad_job_xml", "DOCTYPE")
    assert "root:" not in err["message"]


def test_xml_size_cap(srv, scene_dir):
    xml = GOOD_XML.format(frames='<frame id="0"/>') + "<!--" + "x" * (1024 * 1024) + "-->"
    assert_refused(srv, package(scene_dir, xml=xml), 400, "bad_job_xml", "limit")


def test_not_well_formed(srv, scene_dir):
    assert_refused(srv, package(scene_dir, xml="<distrenjob><name>x</name>"), 400, "bad_job_xml", "well-formed")


def test_schema_violation(srv, scene_dir):
    xml = '<distrenjob><name>x</name><frames><frame id="0"/></frames></distrenjob>'
    assert_refused(srv, package(scene_dir, xml=xml), 400, "bad_job_xml", "schema")


def test_negative_frame_refused(srv, scene_dir):
    assert_refused(srv, package(scene_dir, frames='<frame id="-1"/>'), 400, "bad_job_xml", "schema")


def test_unknown_backend(srv, scene_dir):
    xml = GOOD_XML.format(frames='<frame id="0"/>').replace('name="povray"', 'name="maya"')
    assert_refused(srv, package(scene_dir, xml=xml), 400, "bad_job", "maya")


def test_duplicate_frame(srv, scene_dir):
    assert_refused(srv, package(scene_dir, frames='<range first="0" last="3"/><frame id="2"/>'), 400, "bad_job", "2")


def test_unknown_frame_in_dependency(srv, scene_dir):
    frames = '<frame id="1"><depends>7</depends></frame>'
    assert_refused(srv, package(scene_dir, frames=frames), 400, "bad_job", "7")


def test_dependency_on_missing_job(srv, scene_dir):
    frames = '<frame id="1"><depends>distren://alpha/999999/0</depends></frame>'
    assert_refused(srv, package(scene_dir, frames=frames), 400, "bad_job", "distren://alpha/999999/0")


def test_dependency_on_unknown_server(srv, scene_dir):
    frames = '<frame id="1"><depends>distren://nowhere/1/0</depends></frame>'
    assert_refused(srv, package(scene_dir, frames=frames), 400, "bad_job", "nowhere")


def test_dependency_cycle_named(srv, scene_dir):
    frames = ('<frame id="1"><depends>3</depends></frame><frame id="3"><depends>5</depends></frame>'
              '<frame id="5"><depends>1</depends></frame>')
    err = assert_refused(srv, package(scene_dir, frames=frames), 400, "bad_job", "cycle")
    assert any(c in err["message"] for c in ("1 -> 3 -> 5 -> 1", "3 -> 5 -> 1 -> 3", "5 -> 1 -> 3 -> 5"))


def test_self_dependency_is_a_cycle(srv, scene_dir):
    frames = '<frame id="2"><depends>2</depends></frame>'
    assert_refused(srv, package(scene_dir, frames=frames), 400, "bad_job", "2 -> 2")


def test_frame_count_cap(srv, scene_dir):
    assert_refused(srv, package(scene_dir, frames='<range first="0" last="99999999999"/>'), 400, "bad_job", "50")


def test_unsafe_ini_key(srv, scene_dir, tmp_path):
    bad = tmp_path / "s"
    make_scene(bad)
    (bad / "scene.ini").write_text((bad / "scene.ini").read_text() + "Pre_Frame_Command=touch /tmp/pwned\n")
    assert_refused(srv, package(bad), 400, "bad_settings", "Pre_Frame_Command")


def test_missing_scene_file(srv, scene_dir):
    assert_refused(srv, package(scene_dir, skip=("scene.pov",)), 400, "bad_settings", "scene.pov")


def test_frames_outside_animation(srv, scene_dir):
    assert_refused(srv, package(scene_dir, frames='<frame id="500"/>'), 400, "bad_settings", "500")


def test_reserved_name(srv, scene_dir):
    assert_refused(srv, package(scene_dir, extra=[file_member("_distren/out/x.png", b"x")]), 400, "bad_package", "_distren")


def test_empty_body(srv):
    assert_refused(srv, b"", 400, "bad_package", "empty")


def test_huge_range_is_a_clear_refusal(srv, scene_dir):
    assert_refused(srv, package(scene_dir, frames='<range first="0" last="9223372036854775807"/>'), 400, "bad_job",
                   "more than 50 frames")


def test_dependency_fan_out_is_capped(srv, scene_dir, tmp_path):
    # 50 frames x 5000 distinct dependencies would be 250 000 edges from a small XML
    deps = "".join(f"<depends>distren://alpha/1/{i}</depends>" for i in range(5000))
    xml = GOOD_XML.format(frames=f'<range first="0" last="49">{deps}</range>')
    assert_refused(srv, package(scene_dir, xml=xml), 400, "bad_job", "dependencies")


def test_xz_archive_needing_a_huge_dictionary_is_refused(srv, scene_dir):
    import lzma

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for info, data in [file_member("distrenjob.xml", GOOD_XML.format(frames='<frame id="0"/>').encode())]:
            t.addfile(info, io.BytesIO(data))
    body = lzma.compress(raw.getvalue(), filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1536 * 1024 * 1024}])
    assert_refused(srv, body, 400, "bad_package", "memory")


def test_backend_without_its_renderer_is_refused(tmp_path, scene_dir):
    import os
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bwrap", "povray"):  # everything but ffmpeg
        os.symlink(shutil.which(tool), bin_dir / tool)
    s = ServerProcess(tmp_path / "data", "alpha", 0, env={"PATH": str(bin_dir)}).start()
    try:
        xml = GOOD_XML.format(frames='<range first="0" last="2"/><frame id="3" backend="ffmpeg">'
                              '<depends>0</depends></frame>').replace(
            "</backend>", '</backend><backend name="ffmpeg"/>', 1)
        resp = submit(s, package(scene_dir, xml=xml))
        assert resp.status_code == 400 and "ffmpeg is not installed" in resp.json()["error"]["message"]
    finally:
        s.stop()


def test_a_crashed_checker_costs_one_package_not_the_server(srv, scene_dir):
    import os
    import signal
    import time

    def workers() -> list[int]:
        found = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and int((p / "stat").read_text().split()[3]) == srv.proc.pid \
                        and b"multiprocessing" in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
        return found

    assert workers(), "the server checks packages in a worker process"
    for pid in workers():
        os.kill(pid, signal.SIGKILL)  # as a parser crash on hostile input would
    time.sleep(0.5)
    first = submit(srv, package(scene_dir))
    assert first.status_code == 400, first.text
    assert "crashed the checker" in first.json()["error"]["message"]
    assert submit(srv, package(scene_dir)).status_code == 201
    assert httpx.get(srv.url + "/api/v1/server").status_code == 200


def test_slow_and_stalled_clients_are_cut_off(tmp_path):
    import socket
    import time

    s = ServerProcess(tmp_path / "data", "alpha", 0, ["--header-timeout", "1.5"]).start()
    try:
        silent = socket.create_connection(("127.0.0.1", s.port))
        partial = socket.create_connection(("127.0.0.1", s.port))
        partial.sendall(b"GET /api/v1/server HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        for sock in (silent, partial):
            sock.settimeout(10)
            assert sock.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 5
        # a keep-alive client that sends its next request slowly is cut off too
        live = socket.create_connection(("127.0.0.1", s.port))
        live.sendall(b"GET /api/v1/server HTTP/1.1\r\nHost: x\r\n\r\n")
        live.settimeout(10)
        assert live.recv(12).startswith(b"HTTP/1.1 200")
        live.sendall(b"GET /api/v1/server HTTP/1.1\r\n")
        while live.recv(65536):  # the rest of the first answer, then the close (a timeout fails)
            pass
        assert httpx.get(s.url + "/api/v1/server").status_code == 200
    finally:
        s.stop()
