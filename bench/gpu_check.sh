#!/usr/bin/env bash
# The prepared GPU check, as the lent GPU machine runs it (python -m sctrain.bench gpu, at most 8 minutes).
#
# That machine has torch, torchaudio, accelerate, pytest and numpy, but not soundfile (and its cffi and
# pycparser). Here, before the run, fetch them as wheels once (bench/fetch_wheels.sh writes .whl/, which git
# ignores), then run, from the repository root, with .whl carried along:
#   bash bench/gpu_check.sh            # writes into $OUT (the device tool's folder) or runs/bench/gpu
# Extra arguments go to python -m sctrain.bench gpu (e.g. --budget-s 420 --sections throughput,tta).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-runs/bench/gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia_smi.txt"
# Data and run folders stay in /tmp: only the figures and logs travel back.
python3 -m sctrain.bench gpu --out "$out" --workdir /tmp/sctrain_gpu_check "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
