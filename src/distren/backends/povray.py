"""The POV-Ray 3.7 backend.

Frame N is rendered with the job's animation settings and `Subset_Start_Frame=N
Subset_End_Frame=N`, so POV-Ray computes the clock itself, exactly as `povray scene.ini +SFN +EFN`
would. The job's INI is never passed through: `povray_ini` parses it and keeps only known-safe,
type-checked options (see docs/job-format.md).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

from . import povray_ini
from .base import Backend, FrameTask
from .sandbox import OUT_DIR


class PovrayBackend(Backend):
    name = "povray"
    executable = "povray"
    ro_paths = ("/etc/povray",)
    # POV-Ray reads ./povray.ini instead of the system one; pin the system file (plan() also
    # refuses a job folder holding povray.ini).
    env = {"POVINI": "/etc/povray/3.7/povray.ini"}

    def version(self) -> str | None:
        return _povray_version()

    def check(self, settings: dict[str, str], scene: Path, frame_ids: list[int]) -> list[str]:
        plan = povray_ini.plan(settings, scene)
        povray_ini.check_frames(plan, frame_ids)
        return plan.warnings

    def command(self, task: FrameTask) -> list[str]:
        plan = povray_ini.plan(task.settings, task.scene)
        stem = PurePosixPath(plan.scene).stem
        prefix = f"{OUT_DIR}/{stem}"
        return [self.executable, *povray_ini.frame_args(plan, task.frame, prefix, threads=task.threads)]


@functools.lru_cache(maxsize=1)
def _povray_version() -> str | None:
    exe = shutil.which("povray")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"POV-Ray\s+(\S+)", proc.stdout + proc.stderr)
    return match.group(1) if match else "unknown"
