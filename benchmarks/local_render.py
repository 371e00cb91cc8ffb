#!/usr/bin/env python3
"""Benchmark: one 40-frame POV-Ray animation at 160x120 (the bundled sample) rendered three
ways in the same run:

  (a) `povray orbit.ini` as one animation run,
  (b) one `povray` per frame with `xargs -P <cores>`,
  (c) `distren render orbit.ini -o DIR` (the embedded default, whole command, start-up included).

Prints the three wall times and the ratios c/a and c/b. Target: c <= 1.0 x min(a, b).
Run: .venv/bin/python benchmarks/local_render.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import distren

SAMPLE = Path(distren.__file__).parent / "samples" / "orbit"
FRAMES = 40


def timed(cmd: list[str] | str, cwd: Path, shell: bool = False) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, shell=shell, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def count_pngs(folder: Path) -> int:
    return len(list(folder.glob("*.png")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each way; the best is kept")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    distren_cmd = [str(Path(sys.executable).with_name("distren"))]
    if not Path(distren_cmd[0]).exists():
        distren_cmd = [sys.executable, "-m", "distren.cli"]
    best = {"a": float("inf"), "b": float("inf"), "c": float("inf")}
    with tempfile.TemporaryDirectory(prefix="distren-bench-") as tmp:
        work = Path(tmp) / "orbit"
        shutil.copytree(SAMPLE, work, ignore=shutil.ignore_patterns("*.png"))
        for _ in range(args.repeat):
            for way in "abc":
                out = Path(tmp) / f"out-{way}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                if way == "a":
                    t = timed(["povray", "orbit.ini", "-D", f"+O{out}/orbit"], work)
                elif way == "b":
                    t = timed(f"seq 1 {FRAMES} | xargs -P {cores} -I{{}} povray orbit.ini +SF{{}} +EF{{}} -D +O{out}/orbit",
                              work, shell=True)
                else:
                    t = timed(distren_cmd + ["render", "orbit.ini", "-o", str(out)], work)
                n = count_pngs(out)
                if n != FRAMES:
                    print(f"way {way}: expected {FRAMES} frames, got {n}", file=sys.stderr)
                    return 1
                best[way] = min(best[way], t)
    a, b, c = best["a"], best["b"], best["c"]
    print(f"40 frames of orbit at 160x120 on {cores} cores (best of {args.repeat})")
    print(f"(a) povray, one animation run : {a:7.2f} s")
    print(f"(b) povray per frame, xargs -P{cores}: {b:7.2f} s")
    print(f"(c) distren render            : {c:7.2f} s")
    print(f"c/a = {c / a:.2f}   c/b = {c / b:.2f}   c/min(a,b) = {c / min(a, b):.2f}  (target <= 1.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
