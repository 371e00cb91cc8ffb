"""The server's log as JSON lines (`serve --log-format json`), naming job and frame URLs, and
the access log (`--access-log`), off by default."""

from __future__ import annotations

import json

from conftest import make_scene, run_cli


def _failing_package(tmp):
    ini = make_scene(tmp / "scene", final=0)
    (tmp / "scene" / "scene.pov").write_text((tmp / "scene" / "scene.pov").read_text() + '#error "boom"\n')
    pkg = tmp / "scene.tar.gz"
    r = run_cli("pack", str(ini), "-o", str(pkg), "--width", "16", "--height", "12")
    assert r.returncode == 0, r.stderr
    return pkg


def test_json_log_lines_name_jobs_and_frames_and_access_log(server_factory, tmp_path):
    server = server_factory("alpha", slots=1, extra=["--log-format", "json", "--access-log", "--max-failures", "1"])
    with server.client() as client:
        job = client.submit(_failing_package(tmp_path))
        assert client.wait(job["url"], interval=0.2, timeout=60)["state"] == "failed"
    server.stop()
    lines = server.log.read_text().splitlines()
    records = [json.loads(line) for line in lines]   # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), lines
    submitted = [r for r in records if "submitted" in r["message"]]
    assert submitted and submitted[0]["job"] == job["url"] and submitted[0]["level"] == "info", records
    failed = [r for r in records if r.get("frame") == f"{job['url']}/0"]
    assert failed and failed[0]["job"] == job["url"] and failed[0]["level"] == "warning", records
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    posts = [r for r in access if r["method"] == "POST" and r["path"] == "/api/v1/jobs"]
    assert posts and posts[0]["status"] == 201 and posts[0]["client"].startswith("127.0.0.1:"), access


def test_access_log_is_off_by_default(server_factory):
    server = server_factory("alpha", slots=0)
    with server.client() as client:
        client.jobs()
    server.stop()
    text = server.log.read_text()
    assert "listening on http://" in text and "/api/v1/jobs" not in text, text
