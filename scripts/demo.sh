#!/usr/bin/env bash
# The main job: set up, then render the bundled sample animation (40 frames of POV-Ray) on the
# embedded default server, writing the frames to the folder given (default: ./out/orbit).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
out=${1:-out/orbit}
sample=$(.venv/bin/python -c 'import distren, pathlib; print(pathlib.Path(distren.__file__).parent / "samples/orbit/orbit.ini")')
.venv/bin/distren render "$sample" -o "$out"
echo "frames written to $out"
