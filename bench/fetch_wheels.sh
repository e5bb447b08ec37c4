#!/usr/bin/env bash
# Wheels the GPU machine lacks, for its Python 3.12 on x86-64, into .whl/ (git ignores it): run here, where pip
# reaches a package index, before bash bench/gpu_check.sh runs there with .whl carried along.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl soundfile cffi pycparser
ls -l .whl
