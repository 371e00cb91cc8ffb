#!/usr/bin/env python3
"""Local render benchmark: `distren render` (the embedded default: pack, a private in-process
server, every usable core) against the best plain renderer runs of the same frames, side by
side in one invocation. Every command is timed whole (start-up included) with perf_counter
from its start to its exit; CPU seconds are the child's user + sys from os.wait4 (the child
and every descendant it waited for).

Cases (the sample is distren's bundled orbit scene, copied to a temporary folder first):

  idle     the 40-frame 160x120 orbit sample: small frames, bound by POV-Ray's idle time per
           process, not by CPU. Baselines: (a) one animation run, `povray orbit.ini -D +O<dir>/`
           in the sample's folder; (b) one `povray orbit.ini +SF<n> +EF<n> -D +O<dir>/` per
           frame through `xargs -P<cores>`. distren: `distren render orbit.ini -o <dir>`
           (default settings). ratio = distren wall / the faster baseline's wall; target <= 0.15.
  cpu      12 frames (1-12: orbit.ini animates frames 1-40, and distren refuses frames outside
           them) at 1280x960 with antialiasing threshold 0.3: bound by CPU. Baseline: one
           animation run `povray orbit.ini +SF1 +EF12 +W1280 +H960 +A0.3 -D +O<dir>/`, whose CPU
           seconds / usable cores (os.sched_getaffinity) are the floor no local run can beat.
           distren: `distren render orbit.ini --frames 1-12 --width 1280 --height 960
           --antialias 0.3 -o <dir>`. ratio = distren wall / that floor; target <= 1.10.
  blender  only when `blender` is on PATH. A .blend made at benchmark time by Blender itself
           (`blender -b --factory-startup --python-expr ...`): the default cube scene, the cube
           animated (location and rotation keyed), frames 1-24, 160x120 at 100 %, Cycles with
           16 samples, denoising off. Baselines: (a) one `blender -b -noaudio anim.blend -o
           <dir>/f_#### -F PNG -a`; (b) one `blender -b -noaudio anim.blend -o <dir>/f_#### -F
           PNG -f <n>` per frame through `xargs -P<cores>`. distren: `distren render anim.blend
           -o <dir>`. ratio = distren wall / the faster baseline's wall; target <= 1.0.

Each case checks that every run wrote the expected number of frames (*.png in its output
folder) and that distren's count equals the baseline's; a mismatch or a command that fails is
printed as an ERROR (its log is kept and named) and the exit code is 1. Targets missed are
printed as MISS, not errors. With --repeat N every command runs N times (interleaved) and the
best (lowest) wall time, and for the cpu floor the lowest CPU seconds, are reported.

Every command runs in its own session (process group) with output to a log file; on errors,
Ctrl-C and SIGTERM the running command's whole group is stopped (_common.stop_group). Temporary
folders (tempfile; TMPDIR of the commands points into them too) are removed at the end unless
--keep; nothing is written into the repository. The last line is machine-readable:
`idle_ratio=X cpu_ratio=Y blender_ratio=Z` (`nan` for a case skipped or not measured).

Run: .venv/bin/python benchmarks/local_render.py [--cases idle,cpu,blender] [--repeat N] [--keep]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import distren
from _common import stop_group

SAMPLE = Path(distren.__file__).parent / "samples" / "orbit"
CASES = ("idle", "cpu", "blender")

TARGET_IDLE = 0.15
TARGET_CPU = 1.10
TARGET_BLENDER = 1.0

IDLE_FRAMES = list(range(1, 41))
CPU_FRAMES = list(range(1, 13))
CPU_SIZE = (1280, 960)
CPU_ANTIALIAS = "0.3"
BLENDER_FRAMES = list(range(1, 25))

# Run by Blender to make the benchmark's .blend: sys.argv after "--" is the path to save.
MAKE_BLEND = """
import sys, bpy
path = sys.argv[sys.argv.index("--") + 1]
scene = bpy.context.scene
cube = bpy.data.objects["Cube"]
scene.frame_start, scene.frame_end = 1, 24
for frame, x, z in ((1, -1.5, 0.0), (24, 1.5, 3.14159)):
    scene.frame_set(frame)
    cube.location.x = x
    cube.rotation_euler.z = z
    cube.keyframe_insert(data_path="location", frame=frame)
    cube.keyframe_insert(data_path="rotation_euler", frame=frame)
scene.frame_set(1)
scene.render.resolution_x, scene.render.resolution_y = 160, 120
scene.render.resolution_percentage = 100
scene.render.engine = "CYCLES"
scene.render.image_settings.file_format = "PNG"
scene.cycles.device = "CPU"
scene.cycles.samples = 16
scene.cycles.use_denoising = False
for layer in scene.view_layers:
    layer.cycles.use_denoising = False
bpy.ops.wm.save_as_mainfile(filepath=path)
"""


def distren_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("distren")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "distren.cli"]


def mark(ok: bool) -> str:
    return "pass" if ok else "MISS"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def sigterm(signum, frame):
    raise KeyboardInterrupt


class Runner:
    """Runs commands one at a time, each in its own session, timed, with a log per run."""

    def __init__(self, root: Path):
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.tmp = root / "tmp"
        self.tmp.mkdir()
        self.env = {**os.environ, "TMPDIR": str(self.tmp)}
        self.count = 0

    def run(self, name: str, cmd: list[str], cwd: Path, stdin_text: str | None = None) -> dict:
        """Run cmd to its end: {"wall", "cpu", "rc", "log"}. On KeyboardInterrupt (Ctrl-C,
        SIGTERM) the command's process group is stopped and the interrupt goes on."""
        self.count += 1
        log = self.logs / f"{self.count:03d}-{name}.log"
        stdin_file = None
        if stdin_text is not None:
            stdin_file = self.logs / f"{self.count:03d}-{name}.stdin"
            stdin_file.write_text(stdin_text)
        proc = None
        with open(log, "wb") as logf, open(stdin_file or os.devnull, "rb") as inf:
            logf.write(("$ " + " ".join(cmd) + f"\n  (in {cwd})\n").encode())
            logf.flush()
            try:
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, cwd=cwd, stdin=inf, stdout=logf, stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**self.env, "PWD": str(cwd)})
                _pid, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
            except BaseException:
                stop_group(proc, 10)
                raise
        # The group may still hold processes the command left behind: stop them too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rc": proc.returncode, "log": log}


def count_frames(folder: Path) -> int:
    return len(list(folder.glob("*.png")))


class Case:
    """One case's measurements: per way (a label), the runs' walls, CPU seconds and frame counts."""

    def __init__(self, name: str, expected: int):
        self.name = name
        self.expected = expected
        self.runs: dict[str, list[dict]] = {}
        self.errors: list[str] = []

    def measure(self, runner: Runner, way: str, label: str, cmd: list[str], cwd: Path, out: Path,
                stdin_text: str | None = None) -> dict:
        out.mkdir(parents=True)
        r = runner.run(f"{self.name}-{way}", cmd, cwd, stdin_text)
        r["frames"] = count_frames(out)
        r["label"] = label
        self.runs.setdefault(way, []).append(r)
        n = len(self.runs[way])
        # distren's renders run in a sandbox whose processes wait4 does not fully account: no CPU figure for it.
        cpu = "      - CPU s" if way == "distren" else f"{r['cpu']:7.2f} CPU s"
        print(f"  {self.name:<8} {label:<34} run {n}: {r['wall']:7.2f} s wall, {cpu}, "
              f"{r['frames']} frames, rc {r['rc']}", flush=True)
        if r["rc"] != 0:
            self.errors.append(f"{label}: exit code {r['rc']} (log {r['log']})")
        elif r["frames"] != self.expected:
            self.errors.append(f"{label}: wrote {r['frames']} frames, expected {self.expected} (log {r['log']})")
        return r

    def best_wall(self, way: str) -> float:
        ok = [r["wall"] for r in self.runs.get(way, []) if r["rc"] == 0]
        return min(ok) if ok else math.nan

    def best_cpu(self, way: str) -> float:
        ok = [r["cpu"] for r in self.runs.get(way, []) if r["rc"] == 0]
        return min(ok) if ok else math.nan

    def check_counts(self, baselines: list[str]) -> None:
        """distren's frame count must equal each baseline's (in every run)."""
        theirs = {r["frames"] for way in baselines for r in self.runs.get(way, [])}
        ours = {r["frames"] for r in self.runs.get("distren", [])}
        if ours and theirs and ours != theirs:
            self.errors.append(f"frame count differs: distren wrote {sorted(ours)}, the baselines "
                               f"{sorted(theirs)} (expected {self.expected})")


# -- the cases ------------------------------------------------------------------------------------
def copy_sample(root: Path) -> Path:
    work = root / "orbit"
    if not work.exists():
        shutil.copytree(SAMPLE, work, ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    return work


def frame_list(frames: list[int]) -> str:
    return "".join(f"{n}\n" for n in frames)


def case_idle(runner: Runner, root: Path, repeat: int, cores: int) -> dict:
    case = Case("idle", len(IDLE_FRAMES))
    work = copy_sample(root)
    out = root / "out" / "idle"
    for i in range(repeat):
        case.measure(runner, "anim", "povray, one animation run",
                     ["povray", "orbit.ini", "-D", f"+O{out}/anim-{i}/"], work, out / f"anim-{i}")
        case.measure(runner, "xargs", f"povray per frame, xargs -P{cores}",
                     ["xargs", f"-P{cores}", "-I{}", "povray", "orbit.ini", "+SF{}", "+EF{}", "-D",
                      f"+O{out}/xargs-{i}/"], work, out / f"xargs-{i}", frame_list(IDLE_FRAMES))
        case.measure(runner, "distren", "distren render",
                     distren_cmd() + ["render", str(work / "orbit.ini"), "-o", str(out / f"distren-{i}")],
                     root, out / f"distren-{i}")
    case.check_counts(["anim", "xargs"])
    anim, xargs, ours = case.best_wall("anim"), case.best_wall("xargs"), case.best_wall("distren")
    best = min(anim, xargs)
    return {"case": case, "baseline": f"anim {anim:.2f} s, xargs -P{cores} {xargs:.2f} s",
            "distren": ours, "ratio": ours / best, "target": TARGET_IDLE}


def case_cpu(runner: Runner, root: Path, repeat: int, cores: int) -> dict:
    case = Case("cpu", len(CPU_FRAMES))
    work = copy_sample(root)
    out = root / "out" / "cpu"
    first, last = CPU_FRAMES[0], CPU_FRAMES[-1]
    w, h = CPU_SIZE
    for i in range(repeat):
        case.measure(runner, "anim", "povray, one animation run",
                     ["povray", "orbit.ini", f"+SF{first}", f"+EF{last}", f"+W{w}", f"+H{h}", f"+A{CPU_ANTIALIAS}",
                      "-D", f"+O{out}/anim-{i}/"], work, out / f"anim-{i}")
        case.measure(runner, "distren", "distren render",
                     distren_cmd() + ["render", str(work / "orbit.ini"), "--frames", f"{first}-{last}",
                                      "--width", str(w), "--height", str(h), "--antialias", CPU_ANTIALIAS,
                                      "-o", str(out / f"distren-{i}")], root, out / f"distren-{i}")
    case.check_counts(["anim"])
    cpu, anim, ours = case.best_cpu("anim"), case.best_wall("anim"), case.best_wall("distren")
    floor = cpu / cores if cpu > 0 else math.nan
    return {"case": case, "baseline": f"floor {floor:.2f} s ({cpu:.2f} CPU s / {cores} cores; anim wall {anim:.2f} s)",
            "distren": ours, "ratio": ours / floor, "target": TARGET_CPU}


def make_blend(runner: Runner, root: Path) -> Path | None:
    folder = root / "blend"
    folder.mkdir()
    blend = folder / "anim.blend"
    r = runner.run("blender-make", ["blender", "-b", "-noaudio", "--factory-startup", "--python-exit-code", "2",
                                    "--python-expr", MAKE_BLEND, "--", str(blend)], folder)
    if r["rc"] != 0 or not blend.is_file():
        print(f"  ERROR: making the .blend failed (exit code {r['rc']}; log {r['log']})", flush=True)
        return None
    print(f"  blender  made {blend.name} in {r['wall']:.2f} s", flush=True)
    return blend


def case_blender(runner: Runner, root: Path, repeat: int, cores: int) -> dict:
    case = Case("blender", len(BLENDER_FRAMES))
    blend = make_blend(runner, root)
    if blend is None:
        case.errors.append("could not make the .blend")
        return {"case": case, "baseline": "-", "distren": math.nan, "ratio": math.nan, "target": TARGET_BLENDER}
    work = blend.parent
    out = root / "out" / "blender"
    for i in range(repeat):
        case.measure(runner, "anim", "blender -a, one process",
                     ["blender", "-b", "-noaudio", str(blend), "-o", f"{out}/anim-{i}/f_####", "-F", "PNG", "-a"],
                     work, out / f"anim-{i}")
        case.measure(runner, "xargs", f"blender -f per frame, xargs -P{cores}",
                     ["xargs", f"-P{cores}", "-I{}", "blender", "-b", "-noaudio", str(blend),
                      "-o", f"{out}/xargs-{i}/f_####", "-F", "PNG", "-f", "{}"],
                     work, out / f"xargs-{i}", frame_list(BLENDER_FRAMES))
        case.measure(runner, "distren", "distren render",
                     distren_cmd() + ["render", str(blend), "-o", str(out / f"distren-{i}")], root, out / f"distren-{i}")
    case.check_counts(["anim", "xargs"])
    anim, xargs, ours = case.best_wall("anim"), case.best_wall("xargs"), case.best_wall("distren")
    best = min(anim, xargs)
    return {"case": case, "baseline": f"anim {anim:.2f} s, xargs -P{cores} {xargs:.2f} s",
            "distren": ours, "ratio": ours / best, "target": TARGET_BLENDER}


# -- report ---------------------------------------------------------------------------------------
def table(results: dict[str, dict | str]) -> list[str]:
    head = f"{'case':<8} {'baseline(s) wall':<56} {'distren wall':>12} {'ratio':>7} {'target':>8}  result"
    lines = [head, "-" * len(head)]
    for name in CASES:
        r = results[name]
        if isinstance(r, str):
            lines.append(f"{name:<8} {r}")
            continue
        ratio = r["ratio"]
        if r["case"].errors:
            verdict = "ERROR"
        elif math.isnan(ratio):
            verdict = "not measured"
        else:
            verdict = mark(ratio <= r["target"])
        ours = f"{r['distren']:.2f} s" if not math.isnan(r["distren"]) else "-"
        lines.append(f"{name:<8} {r['baseline']:<56} {ours:>12} {ratio:7.2f} {'<= ' + format(r['target'], '.2f'):>8}  "
                     f"{verdict}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of idle,cpu,blender (default all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command; the best is reported (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (outputs, logs, the .blend)")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or not cases:
        parser.error(f"--cases: comma-separated, of {','.join(CASES)} (unknown: {','.join(unknown) or 'none given'})")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    for tool in ("povray", "xargs"):
        if ({"idle", "cpu"} & set(cases)) and shutil.which(tool) is None:
            print(f"error: {tool} is not on PATH", file=sys.stderr)
            return 2
    cores = usable_cores()
    signal.signal(signal.SIGTERM, sigterm)
    root = Path(tempfile.mkdtemp(prefix="distren-bench-local-"))
    results: dict[str, dict | str] = {c: "skipped: not in --cases" for c in CASES}
    runners = {"idle": case_idle, "cpu": case_cpu, "blender": case_blender}
    try:
        runner = Runner(root)
        print(f"local render: cases {','.join(cases)}, {cores} usable cores, best of {args.repeat}; "
              f"distren: {' '.join(distren_cmd())}", flush=True)
        for name in CASES:
            if name not in cases:
                continue
            if name == "blender" and shutil.which("blender") is None:
                results[name] = "skipped: blender not installed"
                print(f"  blender  {results[name]}", flush=True)
                continue
            results[name] = runners[name](runner, root, args.repeat, cores)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print("\n".join(table(results)))
    failed = False
    for name in CASES:
        r = results[name]
        if isinstance(r, str):
            continue
        for err in r["case"].errors:
            failed = True
            print(f"ERROR {name}: {err}")
    if failed and not args.keep:
        print("(logs were removed with the temporary folder; run with --keep to look at them)")
    if args.keep:
        print(f"kept {root} (outputs, logs, the .blend)")

    def ratio(name: str) -> str:
        r = results[name]
        return "nan" if isinstance(r, str) or math.isnan(r["ratio"]) else f"{r['ratio']:.3f}"

    print(f"idle_ratio={ratio('idle')} cpu_ratio={ratio('cpu')} blender_ratio={ratio('blender')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
