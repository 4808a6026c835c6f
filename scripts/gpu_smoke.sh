#!/usr/bin/env bash
# GPU smoke check: every built system's quick demo with --device cuda and with --device cpu,
# then the numbers of both side by side (scripts/compare_results.py).
#
#   scripts/gpu_smoke.sh [OUT]        # default OUT: runs/gpu_smoke
#
# Needs a CUDA GPU and lucidml installed (`make setup`); uses .venv/bin/python when it
# exists, else $PYTHON or python3. The two tours run at the same time (the CPU one on the
# host's cores), so the wall time is about that of the slower one.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu_smoke}
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
export PYTHONUNBUFFERED=1

"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_smoke: torch sees no CUDA GPU")'
"$py" -m lucidml info
"$py" -c 'import torch; print("gpu:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())'

"$py" -m lucidml tour --quick --device cuda --quiet --out "$out/cuda" >"$out.cuda.log" 2>&1 &
cuda=$!
"$py" -m lucidml tour --quick --device cpu --quiet --out "$out/cpu" >"$out.cpu.log" 2>&1 &
cpu=$!
status=0
wait "$cuda" || status=1
wait "$cpu" || status=1
echo "== cuda tour"; cat "$out.cuda.log"
echo "== cpu tour"; cat "$out.cpu.log"
"$py" scripts/compare_results.py "$out/cpu" "$out/cuda"
exit "$status"
