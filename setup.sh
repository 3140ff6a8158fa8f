#!/usr/bin/env bash
# Set up dam3d on a fresh Debian/Ubuntu machine with Python 3.11, CPU only:
# system libraries for headless Blender (Mesa EGL), a venv with pinned packages,
# the package itself, and the offline u2netp weights. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

# Workbench and EEVEE render headless through Mesa's EGL.
# Chromium: the web app's end-to-end test drives it headless (tests/test_serve.py).
apt_packages=(libegl1 libegl-mesa0 libgl1-mesa-dri chromium)
# A throwaway single-node Slurm for the cluster profile's test (tests/test_slurm.py).
apt_packages+=(slurm-wlm munge)
# Textured CC0/CC-BY 3D models: `dam3d bench make` and its test (tests/test_evaluate.py).
apt_packages+=(sweethome3d-furniture)
if ! dpkg -s "${apt_packages[@]}" >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${apt_packages[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
# On a GPU machine install your CUDA build of torch before running this.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test,serve]'
# The Slurm executor plugin: profiles/slurm-gpu and its test.
.venv/bin/pip install -q -e '.[slurm]'
# u2net and isnet are opt-in: `dam3d install-weights u2net|isnet` (README: Offline cutout backends).
.venv/bin/dam3d install-weights u2netp
# rembg's first import compiles numba kernels (~40 s); pay it here, once, not inside the first job.
.venv/bin/python -c "import rembg" 2>/dev/null
echo "dam3d: setup done (.venv)"
