"""`pip install` of a built wheel works outside the repository: the wheel is built from a copy
of the sources, installed into a fresh venv, and `distren render` renders the bundled sample
from a folder far from the repository. The package data (schema, sample, dashboard files, the
Blender add-on) and the license travel in the wheel.

The fresh venv takes distren from the wheel only (checked); the third-party packages it needs
come from this test's own venv (a path in a .pth file), so the test needs no network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import ROOT

PACKAGE_DATA = ("distren/job/schema/distrenjob.xsd", "distren/samples/orbit/orbit.ini",
                "distren/samples/orbit/orbit.pov", "distren/samples/orbit/orbit_materials.inc",
                "distren/web/static/dashboard.js", "distren/web/static/dashboard.css",
                "distren/blender_addon/distren_blender/__init__.py",
                "distren/blender_addon/distren_blender/blender_manifest.toml")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
    return r


def test_wheel_installs_and_renders_outside_the_repository(tmp_path):
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(source)])
    (wheel,) = dist.glob("distren-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(info).decode()
    assert set(PACKAGE_DATA) <= names, sorted(set(PACKAGE_DATA) - names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert "License-Expression: MIT" in metadata and "Requires-Dist: h11" in metadata, metadata

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)])
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}   # no PYTHONPATH, no repository on any path
    where = _run([str(python), "-c", "import distren, pathlib; print(pathlib.Path(distren.__file__).parent)"],
                 cwd=elsewhere, env=env).stdout.strip()
    assert Path(where) == site / "distren", where
    sample = Path(where) / "samples" / "orbit" / "orbit.ini"
    r = _run([str(venv / "bin" / "distren"), "render", str(sample), "-o", str(elsewhere / "frames"),
              "--frames", "1-2", "--width", "32", "--height", "24", "--json"], cwd=elsewhere, env=env)
    result = json.loads(r.stdout)
    assert result["job"]["state"] == "done", result
    assert len(list((elsewhere / "frames").glob("*.png"))) == 2, list((elsewhere / "frames").iterdir())
