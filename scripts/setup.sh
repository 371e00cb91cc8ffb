#!/usr/bin/env bash
# Installs what distren needs on Debian: POV-Ray, Blender, ffmpeg and bubblewrap (apt, only
# when missing), a virtual environment in .venv with distren and its Python dependencies (and
# test tools with --test: chromium, chromium-driver, zsh and povray-examples from apt, pytest, selenium and the rest
# from PyPI; slurm-wlm and munge from apt for the Slurm tests). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v povray >/dev/null 2>&1 || need+=(povray)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
command -v blender >/dev/null 2>&1 || need+=(blender)
if [ "${1:-}" = "--test" ]; then
    # the dashboard's browser test: Debian's chromium, driven through Debian's chromedriver
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
    # the zsh completion script is checked by zsh itself
    command -v zsh >/dev/null 2>&1 || need+=(zsh)
    # POV-Ray's own sample animations: tests/test_povray_ini.py plans every one of them
    [ -d /usr/share/doc/povray/examples/animations ] || need+=(povray-examples)
    # the Slurm executor's tests: a one-node cluster (scripts/slurm-cluster.sh)
    command -v sbatch >/dev/null 2>&1 || need+=(slurm-wlm)
    command -v slurmctld >/dev/null 2>&1 || need+=(slurm-wlm)
    command -v munged >/dev/null 2>&1 || need+=(munge)
fi
if [ ${#need[@]} -gt 0 ]; then
    mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
    echo "setup: installing ${need[*]} with apt-get" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
