#!/usr/bin/env bash
# The device check (see benchmarks/gpu_check.py): every stage in its own subprocess with its own time
# limit — one slow cold compile or failing stage never aborts the rest — and one JSON with the numbers.
#     bash benchmarks/gpu_check.sh [OUT.json]        # PYTHON=/path/to/python to pick an interpreter
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu_check.py --out "${1:-gpu_check.json}"
