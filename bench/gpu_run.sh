#!/usr/bin/env bash
# The GPU benchmark on a machine that has torch, transformers, peft and accelerate but no network
# (the device tool's image): installs the wheels `make gpu-wheels` put in .whl/, then runs
# bench/trial_speed.py gpu from the source tree. Writes $OUT/gpu.md and $OUT/gpu.json.
#
#   make gpu-wheels                       # here, with PyPI
#   OUT=/some/dir bash bench/gpu_run.sh   # there
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src
export RANKSWEEP_CACHE=${RANKSWEEP_CACHE:-/tmp/rs-cache} HF_HUB_OFFLINE=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft, bitsandbytes; print(torch.__version__, transformers.__version__, peft.__version__, bitsandbytes.__version__)"
python3 bench/trial_speed.py gpu --md "$OUT/gpu.md" --json "$OUT/gpu.json" --timeout 300 "$@"
