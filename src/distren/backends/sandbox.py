"""Run a renderer inside a bubblewrap sandbox.

The renderer sees: the system's /usr (read-only), /etc/alternatives and /etc/ld.so.cache (shared
library links), the read-only folders its backend names (for POV-Ray /etc/povray), the job's scene folder read-only at /job, its own empty output folder
writable at /job/_distren/out, the frame's dependency outputs read-only at /job/_distren/deps, a
private /tmp (a scratch folder of the frame on the data disk), and nothing else: no network, no other processes, no host /etc, /root or /home.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

JOB_DIR = "/job"
OUT_DIR = "/job/_distren/out"
DEPS_DIR = "/job/_distren/deps"
# Mount points created in every scene folder at intake (the package may not use this name).
MOUNT_POINTS = ("_distren/out", "_distren/deps")


class SandboxUnavailable(RuntimeError):
    """Raised when bubblewrap is missing or cannot create a sandbox on this machine."""


@dataclass
class Sandbox:
    scene: Path
    out: Path
    deps: Path
    ro_paths: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # a host folder for the sandbox's /tmp (on the data disk, so it counts as disk, not RAM);
    # None: a private tmpfs
    tmp: Path | None = None

    def argv(self, command: list[str]) -> list[str]:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable("bubblewrap (bwrap) is not installed; renders need it")
        args = [
            bwrap,
            "--unshare-all",
            "--die-with-parent",
            # No --new-session: the sandbox stays in the process group that run_process gives
            # the outer bwrap (a new session without a controlling terminal, so there is no
            # terminal to inject input into), and one killpg() ends every process inside.
            "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc",
            "--dev", "/dev",
            *(["--bind", str(self.tmp), "/tmp"] if self.tmp is not None else ["--tmpfs", "/tmp"]),
        ]
        # Debian links some shared libraries through /etc/alternatives (libblas for ffmpeg);
        # the loader cache speeds up start-up. Neither holds anything private.
        for path in ("/etc/alternatives", "/etc/ld.so.cache", *self.ro_paths):
            if Path(path).exists():
                args += ["--ro-bind", path, path]
        for key, value in self.env.items():
            args += ["--setenv", key, value]
        args += [
            "--ro-bind", str(self.scene), JOB_DIR,
            "--bind", str(self.out), OUT_DIR,
            "--ro-bind", str(self.deps), DEPS_DIR,
            "--chdir", JOB_DIR,
            "--",
        ]
        return args + command


def prepare_scene(scene: Path) -> None:
    """Create the sandbox's mount points inside an extracted scene folder."""
    for mp in MOUNT_POINTS:
        (scene / mp).mkdir(parents=True, exist_ok=True)
