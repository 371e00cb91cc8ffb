"""The command line's progress (stderr; lines when stderr is not a terminal, rich bars on a
terminal; stdout and --json unchanged) and its shell completion (bash and zsh, run by the
shells themselves)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

from conftest import DISTREN, make_scene, run_cli
from distren.progress import Progress


def test_submit_wait_reports_upload_and_frames_in_lines_and_keeps_json_clean(server, tmp_path):
    pkg = tmp_path / "p.tar.gz"
    assert run_cli("pack", str(make_scene(tmp_path / "scene", final=3)), "-o", str(pkg)).returncode == 0
    r = run_cli("submit", str(pkg), "--wait", "--json", "--server", server.url)
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)                     # stdout: the JSON alone
    assert job["state"] == "done"
    lines = r.stderr.splitlines()
    size = pkg.stat().st_size
    assert any(line.startswith("distren: upload: ") and "of" in line for line in lines), lines
    assert any("4/4 frames done" in line for line in lines), lines
    assert lines[-1] == f"distren: {job['url']} done: 4/4 frames done, 0 failed, 0 cancelled"
    assert size > 0
    out = tmp_path / "bundle.tar"
    r = run_cli("download", job["url"], "-o", str(out), "--server", server.url)
    assert r.returncode == 0 and r.stdout.strip() == str(out)
    assert any(line.startswith("distren: download: ") for line in r.stderr.splitlines()), r.stderr


def test_lines_every_period_with_rate_and_eta():
    stream = io.StringIO()
    with Progress(stream=stream, live=False, period=0) as progress:
        frames = progress.frames("orbit")
        job = {"url": "distren://a/1", "state": "running", "total_frames": 10,
               "frames": {"done": 0, "running": 2, "failed": 0, "cancelled": 0}}
        frames(job)
        frames.started -= 10                       # ten seconds later, four frames done
        job["frames"]["done"] = 4
        frames(job)
        sent = progress.bytes("upload", 2_000_000)
        sent(1_000_000)
    text = stream.getvalue()
    assert "distren: orbit: 4/10 frames done, 0.40 frames/s, ETA 0:15 (2 running, 0 failed, running)" in text
    assert "distren: upload: 1.0 MB of 2.0 MB" in text


def test_on_a_terminal_rich_draws_the_bars():
    stream = io.StringIO()
    with Progress(stream=stream, live=True) as progress:
        frames = progress.frames("orbit")
        frames({"url": "distren://a/1", "state": "running", "total_frames": 4,
                "frames": {"done": 0, "running": 1, "failed": 0, "cancelled": 0}})
    assert "orbit" in stream.getvalue() and "0/4 frames done" in stream.getvalue()


def test_bash_completes_commands_and_options():
    script = subprocess.run(DISTREN + ["completion", "bash"], capture_output=True, text=True, check=True).stdout
    probe = script + """
COMP_WORDS=(distren su); COMP_CWORD=1; COMP_LINE="distren su"; COMP_POINT=${#COMP_LINE}
_shtab_distren; echo "commands: ${COMPREPLY[*]}"
COMP_WORDS=(distren submit --wa); COMP_CWORD=2; COMP_LINE="distren submit --wa"; COMP_POINT=${#COMP_LINE}
_shtab_distren; echo "options: ${COMPREPLY[*]}"
"""
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "commands: submit" in out and "options: --wait" in out, out


def test_zsh_takes_its_completion_script():
    assert shutil.which("zsh"), "zsh is installed by ./scripts/setup.sh --test"
    script = subprocess.run(DISTREN + ["completion", "zsh"], capture_output=True, text=True, check=True).stdout
    assert script.startswith("#compdef distren") and "submit" in script and "--radiosity-prepass" in script
    r = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = run_cli("completion", "fish")
    assert r.returncode == 2 and "invalid choice" in r.stderr
