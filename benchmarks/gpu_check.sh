#!/usr/bin/env bash
# The device check (see benchmarks/gpu_check.py): every stage in its own process, one global deadline
# (default 480 s), and everything — gpu_check.json (rewritten after every measurement), logs, run records,
# the Triton kernels' compiled code — in one output FOLDER.
#     bash benchmarks/gpu_check.sh [OUT_DIR] [more gpu_check.py flags, e.g. --deadline 300]
#     PYTHON=/path/to/python3 bash benchmarks/gpu_check.sh      # another interpreter (default python3)
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
shift || true
exec "${PYTHON:-python3}" benchmarks/gpu_check.py --out "$out" "$@"
